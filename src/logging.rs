//! Log lines on stderr: env_logger, human-readable, with each record's key-values
//! (`order_id=17 wood_type=oak ...`) after the message, and the replica's shard on
//! every line when it has one.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

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
                buf.timestamp_millis(),
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
    // A second init (tests calling it twice) keeps the first logger; nothing to report.
    let _ = builder.try_init();
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
