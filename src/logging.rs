//! Log lines on stderr: env_logger, human-readable, with each record's key-values
//! (`order_id=17 wood_type=oak ...`) after the message.

/// Crates whose own chatter stays at warn unless `RUST_LOG` asks for it.
const QUIET: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// Sets up logging: `RUST_LOG`, when set, wins (per-module filters allowed);
/// otherwise `level` applies to the worker.
pub fn init(level: log::LevelFilter) {
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
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never);
    // A second init (tests calling it twice) keeps the first logger; nothing to report.
    let _ = builder.try_init();
}
