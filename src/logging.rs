//! Log lines on stderr, in one of two formats:
//!
//! - `text`: human-readable, each fact said once: after the message, the record's
//!   key-values that the message does not already say (`order 17 (oak x3): ready`
//!   carries no `order_id=17`), empty ones left out, and the replica's shard on every
//!   line when it has one;
//! - `json`: one JSON object per line, `timestamp`, `level`, `logger`, `message`,
//!   `trace_id`, `span_id`, then the record's key-values as fields of their own (and
//!   `shard`). Exported over OTLP, that same text is the log record's body, so a Grafana
//!   derived field reading `"trace_id"` from the body links the line to its trace.
//!
//! Whatever the filters ask, the HTTP, TLS and OpenTelemetry crates' debug and trace
//! lines are never written (they print request headers, credentials included); see
//! [`CAP_NOTE`].

use std::io::Write;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Source, Value, VisitSource};
use log::{Log, Metadata, Record};
use opentelemetry::trace::TraceContextExt;

/// How lines are written on stderr (and, in `Json`, the OTLP record's body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    /// The name `--log-format` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

/// The log target of the exporters' own messages: never sent back through the export.
pub const EXPORT_LOG_TARGET: &str = "ordermanagement::telemetry::export";

/// Records never exported over OTLP: the exporters' own traffic and messages, which
/// would otherwise feed back into the export.
const NOT_EXPORTED: [&str; 5] = [
    EXPORT_LOG_TARGET,
    "ureq",
    "rustls",
    "opentelemetry",
    "hyper",
];

/// The export side of the tee (OTLP), installed by [`crate::telemetry`] when logs
/// export is on.
static EXPORT: RwLock<Option<Box<dyn Log>>> = RwLock::new(None);

/// A message as a line carries it: credentials redacted, at most [`MAX_MESSAGE`]
/// characters.
fn line_message(message: &str) -> String {
    let message = crate::redact::credentials(message);
    shorten(&message, MAX_MESSAGE).into_owned()
}

/// The longest message a line carries, in characters: with its time, level, target
/// and fields a line stays under 2 KB.
pub const MAX_MESSAGE: usize = 1200;

/// Every record to stderr and, when logs export is on, to OTLP (with the trace and span
/// of the order it belongs to).
struct Tee {
    stderr: env_logger::Logger,
    format: Format,
    shard: Option<String>,
}

impl Log for Tee {
    fn enabled(&self, metadata: &Metadata) -> bool {
        !capped(metadata) && self.stderr.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if capped(record.metadata()) || !self.stderr.matches(record) {
            return;
        }
        // Credentials in a URL never reach a line, whoever logs it; and no message is
        // longer than MAX_MESSAGE characters, whatever a service sent into it.
        let message = record.args().to_string();
        let message = line_message(&message);
        self.write(
            &Record::builder()
                .args(format_args!("{message}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .key_values(record.key_values())
                .build(),
        );
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

impl Tee {
    /// Writes a record (its message already redacted) to stderr and to OTLP. A write
    /// error on stderr (closed, or a pipe whose reader is gone) is dropped, never a
    /// panic: env_logger's writer ignores it in text, and the JSON line below does too.
    fn write(&self, record: &Record) {
        let exported = !NOT_EXPORTED.iter().any(|t| record.target().starts_with(t));
        // stderr first, then the export lock: a blocked stderr never holds up
        // `remove_export`.
        // The exported record: `body` (the JSON line, or the message), with the order's
        // fields added to the record's key-values as attributes.
        let otlp = |body: std::fmt::Arguments| {
            if exported
                && let Ok(otlp) = EXPORT.read()
                && let Some(otlp) = otlp.as_ref()
            {
                otlp.log(
                    &Record::builder()
                        .args(body)
                        .metadata(record.metadata().clone())
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .key_values(&WithOrder(record.key_values()))
                        .build(),
                );
            }
        };
        match self.format {
            Format::Text => {
                self.stderr.log(record);
                otlp(*record.args());
            }
            Format::Json => {
                let line = json_line(record, self.shard.as_deref(), SystemTime::now());
                {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(line.as_bytes());
                    let _ = err.write_all(b"\n");
                }
                // The same text as the body; level, target, key-values and the current
                // trace travel in the record's own fields as before.
                otlp(format_args!("{line}"));
            }
        }
    }
}

/// Sends every record that is not the exporters' own to `export` as well as to stderr
/// (telemetry hands over its OTLP log bridge here).
pub fn install_export(export: Box<dyn Log>) {
    if let Ok(mut slot) = EXPORT.write() {
        *slot = Some(export);
    }
}

/// Stops sending records to the export (before its provider shuts down).
pub fn remove_export() {
    if let Ok(mut slot) = EXPORT.write() {
        *slot = None;
    }
}

/// Crates whose own chatter stays at warn unless `RUST_LOG` asks for it.
const QUIET: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// Crates whose lines never go above [`CAP`], whatever `RUST_LOG` or `LOG_LEVEL` asks:
/// at debug, ureq prints every request's headers (`authorization: Basic ...`, the
/// base64 of a URL's credentials, and the OTLP exporter's `OTEL_EXPORTER_OTLP_HEADERS`,
/// sent through the same client) and ureq_proto every header row at trace; the TLS and
/// OpenTelemetry crates are held the same way, as they share those requests. The cap
/// is applied to each record's target by the logger itself, so no filter (a more
/// specific module such as `ureq_proto::client=trace` included) can lift it; redacting
/// instead would mean recognising every form a secret can take in a dependency's
/// debug output.
const CAPPED: [&str; 8] = [
    "ureq",
    "ureq_proto",
    "rustls",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
    "opentelemetry_appender_log",
];

/// The most verbose level a [`CAPPED`] crate's lines may have.
const CAP: log::Level = log::Level::Info;

/// Whether a record comes from a [`CAPPED`] crate at a level above [`CAP`].
fn capped(metadata: &Metadata) -> bool {
    metadata.level() > CAP && {
        let krate = metadata.target().split("::").next().unwrap_or_default();
        CAPPED.contains(&krate)
    }
}

/// The line said at start when the filters ask for lines the cap holds back.
pub const CAP_NOTE: &str = "debug and trace lines of ureq, ureq_proto, rustls and the \
     OpenTelemetry crates are not written, whatever RUST_LOG or LOG_LEVEL asks: at those \
     levels they print request headers, credentials included";

/// Sets up logging: `RUST_LOG`, when set, wins (per-module filters allowed);
/// otherwise `level` applies to the worker.
pub fn init(level: log::LevelFilter, shard: Option<String>, format: Format) {
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
        .format({
            let shard = shard.clone();
            move |buf, record| {
                write!(
                    buf,
                    "[{} {:<5} {}] {}",
                    rfc3339_millis(SystemTime::now()),
                    record.level(),
                    record.target(),
                    record.args()
                )?;
                buf.write_all(text_pairs(record).as_bytes())?;
                if let Some(shard) = &shard {
                    write!(buf, " shard={shard}")?;
                }
                writeln!(buf)
            }
        })
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never);
    let stderr = builder.build();
    let max = stderr.filter();
    // A second init (tests calling it twice) keeps the first logger; nothing to report.
    let tee = Tee {
        stderr,
        format,
        shard,
    };
    let asked_above_cap = CAPPED.iter().any(|krate| {
        let asked = Metadata::builder()
            .level(log::Level::Debug)
            .target(krate)
            .build();
        // A module of the crate may be asked for on its own (`ureq_proto::client=trace`).
        tee.stderr.enabled(&asked) || filters_name(krate)
    });
    if log::set_boxed_logger(Box::new(tee)).is_ok() {
        log::set_max_level(max);
        if asked_above_cap {
            log::warn!(target: "ordermanagement", "{CAP_NOTE}");
        }
    }
}

/// Whether `RUST_LOG` names a module of `krate` at debug or trace.
fn filters_name(krate: &str) -> bool {
    let Ok(filters) = std::env::var("RUST_LOG") else {
        return false;
    };
    filters.split(',').any(|directive| {
        let (module, level) = directive.split_once('=').unwrap_or((directive, ""));
        let module = module.trim();
        (module == krate || module.starts_with(&format!("{krate}::")))
            && (level.is_empty()
                || matches!(
                    level.trim().to_ascii_lowercase().as_str(),
                    "debug" | "trace"
                ))
    })
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

thread_local! {
    /// The order being handled on this thread, for the JSON lines logged meanwhile.
    static ORDER: std::cell::Cell<Option<OrderFields>> = const { std::cell::Cell::new(None) };
}

/// An order's fields, as every per-order JSON line carries them.
#[derive(Debug, Clone, Copy)]
pub struct OrderFields {
    pub id: u64,
    pub wood_type: &'static str,
    pub quantity: u32,
}

/// Until dropped, JSON lines logged on this thread carry `fields` (`order_id`,
/// `wood_type`, `quantity`) unless the record has them already: retry warnings and
/// other lines about the order get them without naming them.
pub fn order_fields(fields: OrderFields) -> OrderGuard {
    OrderGuard(ORDER.replace(Some(fields)))
}

/// Restores the previous order fields when dropped.
pub struct OrderGuard(Option<OrderFields>);

impl Drop for OrderGuard {
    fn drop(&mut self) {
        ORDER.set(self.0);
    }
}

/// Fields every JSON line has; a record's key-value with one of these names is written
/// as `kv_<name>` instead.
const JSON_FIELDS: [&str; 7] = [
    "timestamp",
    "level",
    "logger",
    "message",
    "trace_id",
    "span_id",
    "shard",
];

/// One JSON object for `record`: always valid JSON, whatever the message carries.
pub fn json_line(record: &Record, shard: Option<&str>, at: SystemTime) -> String {
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span = span.span_context();
    let (trace_id, span_id) = if span.is_valid() {
        (span.trace_id().to_string(), span.span_id().to_string())
    } else {
        (String::new(), String::new())
    };
    let mut line = String::with_capacity(256);
    line.push('{');
    let mut fields = JsonFields(&mut line, false);
    fields.string("timestamp", &rfc3339_millis(at));
    fields.string("level", record.level().as_str());
    fields.string("logger", record.target());
    fields.string("message", &record.args().to_string());
    fields.string("trace_id", &trace_id);
    fields.string("span_id", &span_id);
    let _ = WithOrder(record.key_values()).visit(&mut fields);
    if let Some(shard) = shard {
        fields.string("shard", shard);
    }
    line.push('}');
    line
}

/// A record's key-values, followed by the current order's fields (see [`order_fields`])
/// unless the record names its `order_id` itself.
struct WithOrder<'a>(&'a dyn Source);

impl Source for WithOrder<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), log::kv::Error> {
        self.0.visit(visitor)?;
        if let Some(order) = ORDER.get()
            && self.0.get(Key::from("order_id")).is_none()
        {
            visitor.visit_pair(Key::from("order_id"), Value::from(order.id))?;
            visitor.visit_pair(Key::from("wood_type"), Value::from(order.wood_type))?;
            visitor.visit_pair(Key::from("quantity"), Value::from(order.quantity))?;
        }
        Ok(())
    }
}

/// Writes `"key":value` pairs, comma-separated, into a JSON object under construction;
/// the flag: a pair is written.
struct JsonFields<'a>(&'a mut String, bool);

impl JsonFields<'_> {
    fn key(&mut self, key: &str) {
        if self.1 {
            self.0.push(',');
        }
        self.1 = true;
        self.0.push_str(&quoted(key));
        self.0.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push_str(&quoted(value));
    }
}

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        if JSON_FIELDS.contains(&key) {
            self.key(&format!("kv_{key}"));
        } else {
            self.key(key);
        }
        // Numbers and booleans stay numbers and booleans; anything else is a string.
        if let Some(n) = value.to_u64() {
            self.0.push_str(&n.to_string());
        } else if let Some(n) = value.to_i64() {
            self.0.push_str(&n.to_string());
        } else if let Some(b) = value.to_bool() {
            self.0.push_str(if b { "true" } else { "false" });
        } else if let Some(x) = value.to_f64().filter(|x| x.is_finite()) {
            self.0.push_str(
                &serde_json::Number::from_f64(x).map_or("null".into(), |n| n.to_string()),
            );
        } else {
            self.0.push_str(&quoted(&value.to_string()));
        }
        Ok(())
    }
}

/// A JSON string literal (quotes, backslashes and control characters escaped).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// What a text line adds after its message: ` key=value` for each of the record's
/// key-values (the current order's included) that is not empty and that the message
/// does not already say (see [`said`]).
fn text_pairs(record: &Record) -> String {
    let message = record.args().to_string();
    let mut pairs = Pairs {
        out: String::new(),
        message: &message,
    };
    let _ = WithOrder(record.key_values()).visit(&mut pairs);
    pairs.out
}

/// How a message says a numeric field, `{}` standing for its value: the worker's lines
/// name an order `order 17 (oak x3)` and a duration `41 ms`. Other numbers (counts) are
/// never taken as said: a `0` in the prose is not `fetched=0`.
const NUMBER_PHRASES: [(&str, &str, &str); 3] = [
    ("order_id", "order ", ""),
    ("quantity", "x", ""),
    ("duration_ms", "", " ms"),
];

/// True when `message` already says `key`'s `value`: a number in its phrase
/// ([`NUMBER_PHRASES`]), any other value as a whole word or words.
fn said(message: &str, key: &str, value: &str) -> bool {
    if value.parse::<f64>().is_ok() {
        NUMBER_PHRASES
            .iter()
            .find(|(k, _, _)| *k == key)
            .is_some_and(|(_, before, after)| {
                has_words(message, &format!("{before}{value}{after}"))
            })
    } else {
        has_words(message, value)
    }
}

/// `needle` in `haystack`, not as part of a longer word or number.
fn has_words(haystack: &str, needle: &str) -> bool {
    let part_of_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    haystack.match_indices(needle).any(|(at, _)| {
        !part_of_word(haystack[..at].chars().next_back())
            && !part_of_word(haystack[at + needle.len()..].chars().next())
    })
}

/// ` key=value` for each pair not empty and not said in `message`; a value with spaces
/// or quotes is quoted.
struct Pairs<'m> {
    out: String,
    message: &'m str,
}

impl<'kvs> VisitSource<'kvs> for Pairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let text = value.to_string();
        if text.is_empty() || said(self.message, key.as_str(), &text) {
            return Ok(());
        }
        if text.contains(char::is_whitespace) || text.contains('"') {
            self.out.push_str(&format!(" {key}={text:?}"));
        } else {
            self.out.push_str(&format!(" {key}={text}"));
        }
        Ok(())
    }
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
pub fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", text.get(..at).unwrap_or_default()).into(),
        None => text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_redacted_and_cut_to_its_cap() {
        let long = format!("http://u:secret@h:1/ {}", "x".repeat(10_000));
        let line = line_message(&long);
        assert!(!line.contains("secret"));
        assert_eq!(
            line.chars().count(),
            MAX_MESSAGE + 1,
            "the cap and an ellipsis"
        );
        assert!(line.ends_with('…'));
        assert_eq!(line_message("short"), "short");
    }
    use std::time::Duration;

    #[test]
    fn lines_logged_while_an_order_is_handled_carry_its_fields() {
        let line = |kvs: &[(&str, Value)]| {
            let v: serde_json::Value = serde_json::from_str(&json_line(
                &Record::builder()
                    .args(format_args!("attempt 1 failed; retrying"))
                    .key_values(&kvs)
                    .build(),
                None,
                UNIX_EPOCH,
            ))
            .unwrap();
            v
        };
        assert!(line(&[]).get("order_id").is_none());
        {
            let _order = order_fields(OrderFields {
                id: 9,
                wood_type: "elm",
                quantity: 4,
            });
            let v = line(&[]);
            assert_eq!(
                (&v["order_id"], &v["wood_type"], &v["quantity"]),
                (&9.into(), &"elm".into(), &4.into())
            );
            // A record naming its order keeps its own fields, once.
            let v = line(&[("order_id", Value::from(3u64))]);
            assert_eq!(v["order_id"], 3);
            assert!(v.get("wood_type").is_none());
        }
        assert!(
            line(&[]).get("order_id").is_none(),
            "cleared when the guard drops"
        );
    }

    #[test]
    fn json_lines_are_valid_json_whatever_the_message_carries() {
        let nasty =
            "a \"quote\", a \\ backslash,\na newline, \u{1}\u{1f} controls, <html>\u{fffd}</html>";
        let order_id = 17u64;
        let kvs = [
            ("order_id", Value::from(order_id)),
            ("quantity", Value::from(-3i64)),
            ("reason", Value::from(nasty)),
            ("message", Value::from("collides")),
            ("ok", Value::from(true)),
        ];
        let at = UNIX_EPOCH + Duration::from_millis(1_795_533_451_478);
        let line = json_line(
            &Record::builder()
                .args(format_args!("order {order_id}: {nasty}"))
                .level(log::Level::Warn)
                .target("ordermanagement::cycle::worker")
                .key_values(&kvs)
                .build(),
            Some("1/3"),
            at,
        );
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["timestamp"], "2026-11-24T15:17:31.478Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["logger"], "ordermanagement::cycle::worker");
        assert_eq!(v["message"], format!("order 17: {nasty}"));
        assert_eq!(v["trace_id"], "", "no span is current");
        assert_eq!(v["span_id"], "");
        assert_eq!(v["order_id"], 17);
        assert_eq!(v["quantity"], -3);
        assert_eq!(v["reason"], nasty);
        assert_eq!(v["kv_message"], "collides");
        assert_eq!(v["ok"], true);
        assert_eq!(v["shard"], "1/3");
    }

    /// The text line's key-values after `message`, for `kvs`.
    fn pairs(message: &str, kvs: &[(&str, Value)]) -> String {
        text_pairs(
            &Record::builder()
                .args(format_args!("{message}"))
                .key_values(&kvs)
                .build(),
        )
    }

    #[test]
    fn text_lines_say_each_fact_once_and_leave_empty_fields_out() {
        // An outcome line: the prose says every field.
        let outcome = [
            ("outcome", Value::from("ready")),
            ("reason", Value::from("")),
            ("order_id", Value::from(1u64)),
            ("wood_type", Value::from("birch")),
            ("quantity", Value::from(3u32)),
        ];
        assert_eq!(pairs("order 1 (birch x3): ready", &outcome), "");
        let blocked = [
            ("outcome", Value::from("blocked")),
            ("reason", Value::from("insufficient stock")),
            ("order_id", Value::from(12u64)),
        ];
        assert_eq!(
            pairs("order 12 (oak x30): blocked: insufficient stock", &blocked),
            ""
        );
        // The summary: the duration is in the prose, the counts are not (a 0 or a 1 in
        // the prose is not a count).
        let summary = [
            ("fetched", Value::from(0u64)),
            ("ready", Value::from(1u64)),
            ("duration_ms", Value::from(1u64)),
        ];
        assert_eq!(pairs("cycle done in 1 ms", &summary), " fetched=0 ready=1");
        // Values with spaces or quotes are quoted.
        assert_eq!(
            pairs("summary", &[("reason", Value::from("a \"b\" c"))]),
            r#" reason="a \"b\" c""#
        );
        // A line about an order that names only its id keeps the rest; a different id
        // or a word inside a longer one is not the same fact.
        let _order = order_fields(OrderFields {
            id: 9,
            wood_type: "elm",
            quantity: 4,
        });
        assert_eq!(
            pairs(
                "order 9: status update failed (attempt 1 of 4); retrying",
                &[]
            ),
            " wood_type=elm quantity=4"
        );
        assert_eq!(
            pairs("order 90: elmwood", &[]),
            " order_id=9 wood_type=elm quantity=4"
        );
    }

    #[test]
    fn json_lines_keep_every_field_even_the_said_and_empty_ones() {
        let kvs = [
            ("outcome", Value::from("ready")),
            ("reason", Value::from("")),
            ("order_id", Value::from(1u64)),
        ];
        let line = json_line(
            &Record::builder()
                .args(format_args!("order 1 (birch x3): ready"))
                .key_values(&kvs)
                .build(),
            None,
            UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (&v["outcome"], &v["reason"], &v["order_id"]),
            (&"ready".into(), &"".into(), &1.into())
        );
    }

    #[test]
    fn the_http_and_telemetry_crates_never_log_above_info() {
        let capped_at =
            |target: &str, level| capped(&Metadata::builder().target(target).level(level).build());
        for target in [
            "ureq",
            "ureq::run",
            "ureq_proto::util",
            "rustls::client::hs",
            "opentelemetry_otlp",
            "opentelemetry_sdk::trace",
        ] {
            assert!(capped_at(target, log::Level::Debug), "{target}");
            assert!(capped_at(target, log::Level::Trace), "{target}");
            assert!(!capped_at(target, log::Level::Info), "{target}");
            assert!(!capped_at(target, log::Level::Warn), "{target}");
        }
        for target in [
            "ordermanagement",
            "ordermanagement::cycle::worker",
            "ureqx",
            "my_ureq",
        ] {
            assert!(!capped_at(target, log::Level::Trace), "{target}");
        }
    }

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
