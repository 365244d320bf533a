//! Entry points for the fuzzer (`tests/fuzz`, cargo-fuzz) and for the test that
//! replays its corpus on stable (`tests/fuzz_corpus.rs`): each takes arbitrary bytes,
//! runs the parser a peer or a file reaches, and must return without a panic, in time
//! and memory bounded by the input. Not part of the worker's API.

/// The order list scanner and each entry's checks, as a list reply's body.
pub fn order_list(data: &[u8]) {
    if let Ok(page) = crate::services::orders::read_list_body(data, 500) {
        // Every entry is an order or a reason; both must format.
        for entry in page.entries() {
            match entry {
                Ok(order) => drop(format!("{} {}", order.id, order.wood_type)),
                Err(invalid) => drop(format!("{:?} {}", invalid.id, invalid.problem)),
            }
        }
    }
}

/// The state file's replay, as the file's bytes.
pub fn journal_replay(data: &[u8]) {
    match crate::state::journal::replay_bytes(data) {
        Ok(orders) => drop(orders),
        Err(e) => drop(e.to_string()),
    }
}

/// The settings' parsers, each line of `data` a value (lossy UTF-8), and the URL
/// redaction that echoes refused values.
pub fn settings(data: &[u8]) {
    use crate::config;
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let mut next = || lines.next().unwrap_or_default();
    let (a, b, c) = (next(), next(), next());
    let _ = config::base_url(a, "--orders-url", "API_URL_ORDERS");
    let _ = config::error_rate(a);
    let _ = config::timeout(a, "--timeout", "HTTP_TIMEOUT_SECONDS");
    let _ = config::interval(a);
    let _ = config::pending_deadline(a);
    let _ = config::max_retries(a);
    let _ = config::page_size(a);
    let _ = config::max_orders_per_cycle(a);
    let _ = config::dry_run(a);
    let _ = config::log_level(a);
    let _ = config::log_format(a);
    let _ = config::shard(a, b, c);
    let _ = crate::redact::url(a);
    let _ = crate::redact::setting_url(a);
    let _ = crate::redact::credentials(&text);
    let _ = crate::services::http::parse_retry_after(a, std::time::SystemTime::now());
}
