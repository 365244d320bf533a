//! Credentials in the service URLs (`http://user:pass@host`) never appear in what the
//! worker writes or exports: every byte on stderr and stdout, in text and JSON, at debug
//! and trace, and every OTLP request body a loopback receiver gets, are searched for the
//! password, on a run that works, on runs whose services cannot be reached, and on
//! settings refused at start. The OTLP headers' secret is searched for likewise.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Running, otlp};
use standin::{Knobs, OtlpSink, Stack};

const PASSWORD: &str = "pw-Zq81xKvT";
const HEADER_SECRET: &str = "hdr-Yt4mW0pL";
const LIMIT: Duration = Duration::from_secs(20);

/// `http://user:PASSWORD@127.0.0.1:port` for a service at `url`.
fn with_credentials(url: &str) -> String {
    url.replacen("http://", &format!("http://user:{PASSWORD}@"), 1)
}

fn cmd() -> Command {
    let mut cmd = common::worker_command();
    cmd.env("ERROR_RATE", "0")
        .env("HTTP_TIMEOUT_SECONDS", "1")
        .env("DECREASE_TIMEOUT_SECONDS", "2")
        .env("MAX_RETRIES", "0");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    Running::start(cmd)
        .wait_for(LIMIT)
        .unwrap_or_else(|| panic!("{cmd:?} still running after {LIMIT:?}; killed"))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Standard base64 (with padding), as HTTP basic authentication encodes `user:password`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The secrets searched for: the password, the OTLP header's secret, and the
/// `Authorization: Basic` value a URL's credentials become (the password does not show
/// in it as text).
fn secrets() -> [String; 3] {
    [
        PASSWORD.to_string(),
        HEADER_SECRET.to_string(),
        base64(format!("user:{PASSWORD}").as_bytes()),
    ]
}

/// The bytes of every hex dump in `text` (ureq_proto's trace rows, `4745 5420 2f6f ...
/// GET./o`, 16 bytes a row), joined: a secret split across two rows shows whole here.
fn dumped_bytes(text: &[u8]) -> Vec<u8> {
    let row = regex::Regex::new(r"((?:[0-9a-f-]{4} ){8}) ").unwrap();
    let mut bytes = Vec::new();
    for caps in row.captures_iter(&String::from_utf8_lossy(text)) {
        for group in caps[1].split_whitespace() {
            for pair in [&group[..2], &group[2..]] {
                if let Ok(b) = u8::from_str_radix(pair, 16) {
                    bytes.push(b);
                }
            }
        }
    }
    bytes
}

/// Neither secret in the output (hex dumps included) or in any OTLP body.
fn assert_clean(case: &str, out: &Output, sink: Option<&OtlpSink>) {
    let dumped = dumped_bytes(&out.stderr);
    for (name, bytes) in [
        ("stderr", &out.stderr),
        ("stdout", &out.stdout),
        ("stderr's hex dumps", &dumped),
    ] {
        for secret in &secrets() {
            assert!(
                !contains(bytes, secret),
                "{case}: {name} shows a secret:\n{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    if let Some(sink) = sink {
        for path in ["/v1/traces", "/v1/metrics", "/v1/logs"] {
            for body in sink.bodies(path) {
                for secret in &secrets() {
                    assert!(!contains(&body, secret), "{case}: {path} exports a secret");
                }
            }
        }
    }
}

/// The `url.full` of every exported span.
fn exported_urls(sink: &OtlpSink) -> Vec<String> {
    otlp::spans(sink)
        .iter()
        .filter_map(|span| otlp::attr(span, "url.full"))
        .collect()
}

#[test]
fn a_working_run_shows_and_exports_no_password() {
    for format in ["text", "json"] {
        for (level, rust_log) in [("debug", None), ("trace", None), ("trace", Some("trace"))] {
            let case = format!("LOG_FORMAT={format} LOG_LEVEL={level} RUST_LOG={rust_log:?}");
            let stack = Stack::start(0, 0, Knobs::default()).expect("stand-ins");
            stack.add_stock("oak", 100);
            let id = stack.add_order("oak", 3);
            let sink = OtlpSink::start().expect("OTLP receiver");
            let mut cmd = cmd();
            cmd.env("API_URL_ORDERS", with_credentials(&stack.orders_url()))
                .env("API_URL_STOCKS", with_credentials(&stack.stocks_url()))
                .env("LOG_FORMAT", format)
                .env("LOG_LEVEL", level)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
                .env(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    format!("authorization=Bearer {HEADER_SECRET}"),
                )
                .arg("once");
            if let Some(filter) = rust_log {
                cmd.env("RUST_LOG", filter);
            }
            let out = run(&mut cmd);
            assert_eq!(out.status.code(), Some(0), "{case}: {out:?}");
            // The run did its work, so every path that logs a URL ran.
            assert_eq!(stack.ledger().len(), 1, "{case}");
            assert!(
                stack
                    .orders()
                    .iter()
                    .any(|o| o.id == id && o.status == "ready")
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("orders http://REDACTED:REDACTED@127.0.0.1:"),
                "{case}: the start-up line names the services, redacted:\n{stderr}"
            );
            drop(stack);
            assert_clean(&case, &out, Some(&sink));
            let urls = exported_urls(&sink);
            assert!(urls.len() >= 3, "{case}: {urls:?}");
            for url in &urls {
                assert!(
                    url.starts_with("http://REDACTED:REDACTED@127.0.0.1:"),
                    "{case}: url.full {url}"
                );
            }
        }
    }
}

#[test]
fn base64_and_hex_dumps_are_read_as_the_headers_carry_them() {
    assert_eq!(base64(b"ouser:URLPASS1"), "b3VzZXI6VVJMUEFTUzE=");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"a"), "YQ==");
    // Two rows as ureq_proto writes them, the value split between them.
    let rows =
        b"[t TRACE ureq_proto::util] 3a20 4261 7369 6320 6233 567a 5a58 4936  :.Basic.b3VzZXI6\n\
        [t TRACE ureq_proto::util] 5656 4a4d 5545 4654 557a 453d 0d0a ----  VVJMUEFTUzE=....\n";
    assert!(contains(&dumped_bytes(rows), "Basic b3VzZXI6VVJMUEFTUzE="));
}

/// Every log filter that asks the HTTP, TLS and OpenTelemetry crates for their trace
/// lines, module by module.
const EVERY_DEPENDENCY_AT_TRACE: &str = "trace,ureq=trace,ureq_proto=trace,\
    ureq_proto::client=trace,ureq::run=trace,rustls=trace,opentelemetry=trace,\
    opentelemetry_sdk=trace,opentelemetry_otlp=trace,opentelemetry_http=trace";

#[test]
fn dependencies_asked_for_trace_lines_print_no_header() {
    for format in ["text", "json"] {
        for rust_log in [EVERY_DEPENDENCY_AT_TRACE, "ureq_proto=trace"] {
            let case = format!("LOG_FORMAT={format} RUST_LOG={rust_log}");
            let stack = Stack::start(0, 0, Knobs::default()).expect("stand-ins");
            stack.add_stock("oak", 100);
            stack.add_order("oak", 3);
            let sink = OtlpSink::start().expect("OTLP receiver");
            let out = run(cmd()
                .env("API_URL_ORDERS", with_credentials(&stack.orders_url()))
                .env("API_URL_STOCKS", with_credentials(&stack.stocks_url()))
                .env("LOG_FORMAT", format)
                .env("RUST_LOG", rust_log)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
                .env(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    format!("authorization=Bearer {HEADER_SECRET}"),
                )
                .arg("once"));
            assert_eq!(out.status.code(), Some(0), "{case}: {out:?}");
            assert_eq!(stack.ledger().len(), 1, "{case}: the run did its work");
            drop(stack);
            assert_clean(&case, &out, Some(&sink));
            let stderr = String::from_utf8_lossy(&out.stderr);
            let notes = stderr
                .lines()
                .filter(|l| l.contains("are not written, whatever RUST_LOG or LOG_LEVEL asks"))
                .count();
            assert_eq!(notes, 1, "{case}: one line says so at start:\n{stderr}");
        }
    }
}

#[test]
fn unreachable_services_show_and_export_no_password() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let targets = [
        (
            "connection refused",
            format!("http://user:{PASSWORD}@127.0.0.1:{closed}"),
        ),
        (
            "host not found",
            format!("http://user:{PASSWORD}@no-such-host.invalid:5000"),
        ),
    ];
    for (what, url) in &targets {
        for format in ["text", "json"] {
            let case = format!("{what}, {format}");
            let sink = OtlpSink::start().expect("OTLP receiver");
            let out = run(cmd()
                .env("API_URL_ORDERS", url)
                .env("API_URL_STOCKS", url)
                .env("LOG_FORMAT", format)
                .env("LOG_LEVEL", "trace")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url())
                .arg("once"));
            assert_eq!(out.status.code(), Some(1), "{case}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("could not fetch registered orders"),
                "{case}: the failure is logged:\n{stderr}"
            );
            assert_clean(&case, &out, Some(&sink));
            assert!(
                exported_urls(&sink)
                    .iter()
                    .all(|u| u.starts_with("http://REDACTED:REDACTED@")),
                "{case}"
            );
        }
    }
}

#[test]
fn settings_refused_at_start_show_no_password() {
    let bad = [
        format!("ftp://user:{PASSWORD}@order:5000"),
        format!("user:{PASSWORD}@order:5000"),
        format!("http://user:{PASSWORD}@order:5000?x=1"),
        format!("http://user:{PASSWORD}@order:notaport"),
        format!("http://user:{PASSWORD}@order:65536"),
        format!("http://user:{PASSWORD}@order:5000/#top"),
    ];
    for value in &bad {
        for format in ["text", "json"] {
            for var in ["API_URL_ORDERS", "API_URL_STOCKS"] {
                let case = format!("{var}={value} LOG_FORMAT={format}");
                let out = run(cmd()
                    .env(var, value)
                    .env("LOG_FORMAT", format)
                    .env("LOG_LEVEL", "trace")
                    .arg("once"));
                assert_eq!(out.status.code(), Some(2), "{case}: {out:?}");
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains(var) && stderr.contains("REDACTED:REDACTED@"),
                    "{case}: the message names the setting, redacted:\n{stderr}"
                );
                assert_clean(&case, &out, None);
            }
        }
    }
    // A bad setting elsewhere: the URLs are not shown at all, and a URL typed as a
    // command is shown redacted by the usage error.
    let url = format!("http://user:{PASSWORD}@order:5000");
    for args in [&["once", "--page-size", "0"][..], &[url.as_str()][..]] {
        let out = run(cmd().env("API_URL_ORDERS", &url).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_clean(&format!("{args:?}"), &out, None);
    }
}

#[test]
fn help_shows_the_variables_redacted() {
    let url = format!("http://user:{PASSWORD}@order:5000");
    let out = run(cmd()
        .env("API_URL_ORDERS", &url)
        .env("API_URL_STOCKS", &url)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer {HEADER_SECRET}"),
        )
        .arg("--help"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("API_URL_ORDERS=http://REDACTED:REDACTED@order:5000"),
        "{stdout}"
    );
    assert_clean("--help", &out, None);
}
