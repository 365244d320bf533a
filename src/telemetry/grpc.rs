//! OTLP/gRPC without an async runtime: the OTLP exporter's HTTP client, swapped for one
//! that sends each http/protobuf request it is given as a gRPC unary call over the
//! HTTP/2 client of [`super::h2`], on the SDK's export thread.
//!
//! The exporter builds the same protobuf message as for OTLP/HTTP and hands it over
//! with its headers (`OTEL_EXPORTER_OTLP_HEADERS` and the per-signal ones, and the
//! user agent); this client frames it (the 5-byte gRPC prefix), sends it to the
//! signal's `Export` method with `content-type: application/grpc`, `te: trailers`,
//! `grpc-timeout` and those headers as metadata, and turns the `grpc-status` back into
//! an HTTP status the exporter's retry policy understands, as the OTLP specification
//! sorts them: OK is 200 with the reply's message; the retryable codes (CANCELLED,
//! DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS) are 503, and
//! RESOURCE_EXHAUSTED is 429 when the server sends a RetryInfo (both with its delay
//! as `retry-after`, in whole seconds rounded up); every other code is 400, dropped.
//! RST_STREAM is mapped as gRPC maps it (REFUSED_STREAM to UNAVAILABLE, and so on).
//! The exporter's retry policy (one retry after about 100 ms, or after the server's
//! delay; all within the export timeout) does the retrying. With gzip
//! (`OTEL_EXPORTER_OTLP_COMPRESSION`), the exporter compresses the message and this
//! client sets the compressed flag and `grpc-encoding: gzip`. A failure is logged on
//! stderr now and then, never with a header value: what the server says (grpc-message,
//! and any other text in a note) has every value of the request's metadata replaced
//! by `REDACTED` (a server that echoes the request would show
//! `OTEL_EXPORTER_OTLP_HEADERS` otherwise), control and bidirectional-override
//! characters removed, and is cut to [`MAX_PEER_TEXT`] bytes.
//!
//! One connection per signal is kept open and reused; after GOAWAY, a broken
//! connection or a protocol error, the next call opens a new one. A request the
//! server did not process (GOAWAY before its stream), or one that finds a reused
//! connection closed, is sent once more at once on a new connection, within the same
//! deadline. Everything, from the name lookup to the last byte of the reply, runs
//! against one deadline: the signal's export timeout.
//!
//! A connection closed for the server's misbehaviour (a protocol or HPACK error, a
//! flood over the HTTP/2 budgets, a reply too large) is not replaced at once: the
//! next connection waits [`BACKOFF_FIRST`], doubled after each such close up to
//! [`BACKOFF_MAX`], back to the first after a reply; a call meanwhile fails at once
//! (the exporter retries or drops the batch as for a collector that is down), so a
//! hostile server cannot keep us reconnecting in a loop.
//!
//! `https://` endpoints: TLS by rustls (ring) with ALPN `h2`, the server checked
//! against the bundled roots, or against the PEM file `OTEL_EXPORTER_OTLP_CERTIFICATE`
//! (or the per-signal variable) names.
//!
//! Nothing a server sends can panic: the module denies unwrap, expect, panic and
//! unchecked indexing outside its tests.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_http::{Bytes, HttpError, Request, Response};
use ureq::http::{HeaderValue, StatusCode};

use super::{ErrorLog, Signal};
use grpc_unary::h2::{self, Connection, Io};

/// How long a connection attempt may take: a collector that is down costs
/// milliseconds, as for OTLP/HTTP.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The deadline of a call whose timeout is too large for the clock (a day: in effect,
/// none; the exporter's own timeout ends the export first).
const FAR: Duration = Duration::from_secs(24 * 3600);
/// The most bytes of text from the server (grpc-message, an error) a note shows.
const MAX_PEER_TEXT: usize = 512;
/// What stands in place of a secret in a note (as in [`crate::redact`]).
const REDACTED: &str = "REDACTED";
/// The wait before a new connection after one closed for the server's misbehaviour.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest such wait (it doubles each time).
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the calls go: `http://host:port` (cleartext HTTP/2 with prior knowledge) or
/// `https://host:port` (TLS, ALPN h2). The endpoint's path is not used: with gRPC the
/// method names the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        let uri: ureq::http::Uri = endpoint
            .parse()
            .map_err(|_| format!("{endpoint} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") | None => false,
            Some(other) => return Err(format!("{other}:// is not supported (http or https)")),
        };
        if tls && !cfg!(feature = "tls") {
            return Err("https:// needs the tls feature, which this build lacks".into());
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{endpoint} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target { tls, host, port })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The gRPC method of each signal's collector service.
fn method(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

/// The OTLP/gRPC client of one signal.
#[derive(Debug)]
pub struct GrpcClient {
    signal: Signal,
    target: Target,
    authority: String,
    timeout: Duration,
    /// The TLS client configuration, for https://.
    tls: Option<tls::Config>,
    connection: Mutex<Slot>,
    errors: ErrorLog,
}

impl GrpcClient {
    /// The client of `signal`; for https://, the server's certificate is checked
    /// against the PEM file `certificate` if given, the bundled roots otherwise.
    pub fn new(
        signal: Signal,
        target: Target,
        certificate: Option<&str>,
        timeout: Duration,
    ) -> Result<GrpcClient, String> {
        let tls = match target.tls {
            true => Some(tls::config(certificate)?),
            false => None,
        };
        Ok(GrpcClient {
            signal,
            authority: target.authority(),
            target,
            timeout,
            tls,
            connection: Mutex::new(Slot::default()),
            errors: ErrorLog::new(signal),
        })
    }

    pub fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let now = Instant::now();
        let deadline = now.checked_add(self.timeout).unwrap_or(now + FAR);
        let (parts, body) = request.into_parts();
        // The exporter compresses the body when OTEL_EXPORTER_OTLP_COMPRESSION asks.
        let gzip = parts
            .headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let Ok(len) = u32::try_from(body.len()) else {
            return Err("an export request larger than 4 GiB".into());
        };
        let mut message = Vec::with_capacity(body.len() + 5);
        message.push(u8::from(gzip));
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(&body);
        let grpc_timeout = format!("{}m", self.timeout.as_millis().clamp(1, 99_999_999));
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"application/grpc"),
            ("te", b"trailers"),
            ("grpc-timeout", grpc_timeout.as_bytes()),
        ];
        if gzip {
            headers.push(("grpc-encoding", b"gzip"));
        }
        let mut secrets = Secrets::default();
        for (name, value) in &parts.headers {
            match name.as_str() {
                // Said above, or not allowed in HTTP/2.
                "content-type" | "content-encoding" | "content-length" | "te" | "grpc-timeout"
                | "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "host" => {}
                name => {
                    headers.push((name, value.as_bytes()));
                    secrets.add(value.as_bytes());
                }
            }
        }
        let request = h2::Request {
            scheme: if self.target.tls { "https" } else { "http" },
            authority: &self.authority,
            path: method(self.signal),
            headers: &headers,
            body: &message,
        };
        match self.call(&request, deadline) {
            Ok(response) => Ok(self.reply(response, &secrets)),
            Err(Failure::H2(h2::Error::Reset(code))) => Ok(self.reset(code)),
            Err(e) => {
                let what = format!("{}: {}", self.authority, secrets.scrub(&e.to_string()));
                self.errors.note(&what);
                Err(what.into())
            }
        }
    }

    /// Sends `request` on the open connection, or on a new one (unless backing off).
    fn call(&self, request: &h2::Request, deadline: Instant) -> Result<h2::Response, Failure> {
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let mut again = true;
        loop {
            let (mut connection, reused) = match slot.connection.take().filter(|c| c.usable()) {
                Some(connection) => (connection, true),
                None => {
                    if let Some(left) = slot.waiting() {
                        return Err(Failure::BackingOff(left));
                    }
                    let connection = self.connect(deadline).inspect_err(|e| slot.after(e))?;
                    (Box::new(connection), false)
                }
            };
            let result = connection.request(request, deadline);
            if connection.usable() {
                slot.connection = Some(connection);
            }
            match &result {
                Ok(_) => slot.replied(),
                Err(e) => slot.after(e),
            }
            match result {
                Err(e) if again && (not_processed(&e) || reused && closed(&e)) => again = false,
                result => return result.map_err(Failure::H2),
            }
        }
    }

    fn connect(&self, deadline: Instant) -> Result<Connection<Box<dyn Io>>, h2::Error> {
        let addrs = lookup(&self.target.host, self.target.port, deadline)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut).into());
            }
            match TcpStream::connect_timeout(&addr, left.min(CONNECT_TIMEOUT)) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let io: Box<dyn Io> = match &self.tls {
                        Some(config) => tls::connect(tcp, &self.target.host, config, deadline)?,
                        None => Box::new(tcp),
                    };
                    return Connection::handshake(io, deadline);
                }
                Err(e) => last = e,
            }
        }
        Err(last.into())
    }

    /// The exporter's view of a gRPC reply.
    fn reply(&self, response: h2::Response, secrets: &Secrets) -> Response<Bytes> {
        if response.status != 200 {
            // Not a gRPC server's answer (a proxy's). 429, 502, 503 and 504 are retried
            // by the exporter, as gRPC maps them to UNAVAILABLE; any other status is
            // dropped (gRPC's UNKNOWN), a 2xx other than 200 included: it is no
            // success of the call.
            self.errors.note(&format!(
                "{} answered HTTP {} to a gRPC call",
                self.authority, response.status
            ));
            let status = match response.status {
                429 | 502 | 503 | 504 => response.status,
                _ => 400,
            };
            return http(status, Vec::new());
        }
        let Some(code) = response
            .field("grpc-status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            self.errors
                .note(&format!("{} answered without grpc-status", self.authority));
            return http(500, Vec::new());
        };
        if code == 0 {
            // The reply's message (partial success), unless compressed: we never ask
            // for that, and the exporter only reads it for its log.
            let mut body = response.body;
            if body.len() >= 5 && body.first() == Some(&0) {
                // In place, without a copy.
                body.drain(..5);
            } else {
                body = Vec::new();
            }
            return http(200, body);
        }
        let delay = response
            .field("grpc-status-details-bin")
            .and_then(retry_delay);
        let status = match (code, delay) {
            (1 | 4 | 10 | 11 | 14 | 15, _) => 503,
            (8, Some(_)) => 429,
            _ => 400,
        };
        let message = response
            .field("grpc-message")
            .map(|text| secrets.scrub(&percent_decode(text)))
            .unwrap_or_default();
        self.errors.note(&format!(
            "{} answered {} ({code}){}{}",
            self.authority,
            code_name(code),
            if message.is_empty() { "" } else { ": " },
            message
        ));
        let mut reply = http(status, Vec::new());
        if let Some(delay) = delay.filter(|_| status != 400) {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            reply
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
        }
        reply
    }

    /// RST_STREAM, as gRPC maps its error codes: REFUSED_STREAM is UNAVAILABLE and
    /// CANCEL is CANCELLED (both retried), ENHANCE_YOUR_CALM is RESOURCE_EXHAUSTED and
    /// the rest INTERNAL (dropped).
    fn reset(&self, code: u32) -> Response<Bytes> {
        let (grpc, status) = match code {
            0x7 => (14, 503),
            0x8 => (1, 503),
            0xb => (8, 400),
            _ => (13, 400),
        };
        self.errors.note(&format!(
            "{} reset the stream (HTTP/2 error {code}): {}",
            self.authority,
            code_name(grpc)
        ));
        http(status, Vec::new())
    }
}

/// The connection of a client, and when the next may be opened.
#[derive(Debug)]
struct Slot {
    connection: Option<Box<Connection<Box<dyn Io>>>>,
    /// No new connection before then (the last was closed for the server's
    /// misbehaviour).
    closed_until: Option<Instant>,
    /// The wait after the next such close.
    backoff: Duration,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            connection: None,
            closed_until: None,
            backoff: BACKOFF_FIRST,
        }
    }
}

impl Slot {
    /// How long before a new connection may be opened, if at all.
    fn waiting(&self) -> Option<Duration> {
        let until = self.closed_until?;
        Some(until.saturating_duration_since(Instant::now())).filter(|left| !left.is_zero())
    }

    /// After a call that failed with `error`: a connection closed for the server's
    /// misbehaviour starts a wait, twice as long as the last.
    fn after(&mut self, error: &h2::Error) {
        if error.misbehaved() {
            let now = Instant::now();
            self.closed_until = Some(now.checked_add(self.backoff).unwrap_or(now));
            self.backoff = self.backoff.saturating_mul(2).min(BACKOFF_MAX);
        }
    }

    /// After a reply: no wait.
    fn replied(&mut self) {
        self.closed_until = None;
        self.backoff = BACKOFF_FIRST;
    }
}

/// Why a call got no reply.
#[derive(Debug)]
enum Failure {
    H2(h2::Error),
    /// No new connection yet (see [`Slot`]): this long still.
    BackingOff(Duration),
}

impl From<h2::Error> for Failure {
    fn from(e: h2::Error) -> Failure {
        Failure::H2(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::H2(e) => write!(f, "{e}"),
            Failure::BackingOff(left) => write!(
                f,
                "not connecting again for {} ms: the last connection was closed for the \
                 server's misbehaviour",
                left.as_millis()
            ),
        }
    }
}

/// A reply to the exporter: a status of ours, one of those it knows.
fn http(status: u16, body: Vec<u8>) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response
}

/// The addresses of `host`: an IP address as it is; a name looked up on a helper
/// thread, so that a resolver that does not answer costs no more than the deadline
/// (a lookup runs only when a connection is opened).
fn lookup(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = format!("{host}:{port}");
    let caller = thread::current();
    let answer: Arc<Mutex<Option<io::Result<Vec<SocketAddr>>>>> = Arc::default();
    let told = answer.clone();
    thread::Builder::new()
        .name("otlp-grpc-lookup".into())
        .spawn(move || {
            let addrs = name.to_socket_addrs().map(Vec::from_iter);
            *told.lock().unwrap_or_else(|e| e.into_inner()) = Some(addrs);
            caller.unpark();
        })?;
    loop {
        if let Some(addrs) = answer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return addrs;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Left to finish on its own.
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "name lookup timed out",
            ));
        }
        thread::park_timeout(left);
    }
}

/// The server said it did not take the stream: safe to send again.
fn not_processed(e: &h2::Error) -> bool {
    matches!(e, h2::Error::Refused { .. })
}

/// The connection was found closed (a reused one the server had let go).
fn closed(e: &h2::Error) -> bool {
    matches!(e, h2::Error::Io(e) if matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    ))
}

fn code_name(code: u32) -> &'static str {
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
    .get(code as usize)
    .copied()
    .unwrap_or("an unknown code")
}

/// grpc-message is percent-encoded (its length is bounded by the header list's).
fn percent_decode(value: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if let (b'%', &[h, l, ..]) = (b, tail)
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push(h << 4 | l);
            rest = tail.get(2..).unwrap_or_default();
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of a request's metadata (`OTEL_EXPORTER_OTLP_HEADERS` and the
/// per-signal ones, as the exporter hands them over), never to be shown.
#[derive(Debug, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    /// A header value: the value, and each of its words of 8 bytes or more (the token
    /// of `Bearer <token>`, echoed alone).
    fn add(&mut self, value: &[u8]) {
        let value = printable(&String::from_utf8_lossy(value));
        let words = value.split_whitespace().filter(|w| w.len() >= 8);
        let words: Vec<String> = words.map(str::to_string).collect();
        self.0.push(value);
        self.0.extend(words);
        self.0.retain(|s| !s.is_empty());
        // Longest first: a value before the words inside it.
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.0.dedup();
    }

    /// Text from the server, fit for one log line: control and bidirectional-override
    /// characters removed, every secret and a URL's user information replaced, then
    /// cut to [`MAX_PEER_TEXT`] bytes (after the replacing, so that no part of a
    /// secret is left at the cut).
    fn scrub(&self, text: &str) -> String {
        let mut text = printable(text);
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        let mut text = crate::redact::credentials(&text).into_owned();
        if text.len() > MAX_PEER_TEXT {
            let mut cut = MAX_PEER_TEXT - 3;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}

/// `text` without control characters and those that reorder what a terminal shows
/// (bidirectional embeddings, overrides, isolates and marks).
fn printable(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            !c.is_control()
                && !matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// The delay of the RetryInfo in a `grpc-status-details-bin` (a base64
/// google.rpc.Status whose details hold google.rpc.RetryInfo), if any.
fn retry_delay(value: &[u8]) -> Option<Duration> {
    let status = base64_decode(value)?;
    for detail in protobuf_fields(&status)? {
        let (3, Field::Bytes(any)) = detail else {
            continue;
        };
        let any = protobuf_fields(any)?;
        let is_retry_info = any.iter().any(
            |f| matches!(f, (1, Field::Bytes(url)) if url.ends_with(b"/google.rpc.RetryInfo")),
        );
        if !is_retry_info {
            continue;
        }
        let info = any.iter().find_map(|f| match f {
            (2, Field::Bytes(info)) => Some(*info),
            _ => None,
        })?;
        let Some((1, Field::Bytes(duration))) =
            protobuf_fields(info)?.into_iter().find(|f| f.0 == 1)
        else {
            return Some(Duration::ZERO);
        };
        let (mut seconds, mut nanos) = (0, 0);
        for field in protobuf_fields(duration)? {
            match field {
                (1, Field::Varint(s)) => seconds = s,
                (2, Field::Varint(n)) => nanos = n,
                _ => {}
            }
        }
        let delay =
            Duration::from_secs(seconds.min(3600)) + Duration::from_nanos(nanos % 1_000_000_000);
        return Some(delay);
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message (numbers and values), or None if malformed.
fn protobuf_fields(mut bytes: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut bytes)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                bytes = bytes.get(n..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let (value, rest) = (bytes.get(..len)?, bytes.get(len..)?);
                bytes = rest;
                Field::Bytes(value)
            }
            _ => return None,
        };
        fields.push((key >> 3, value));
    }
    Some(fields)
}

/// Standard base64, padded or not (gRPC sends `-bin` values unpadded).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in text.iter().filter(|c| **c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(feature = "tls")]
mod tls {
    use std::io::{self, Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use grpc_unary::h2::{Error, Io};

    struct Tls(StreamOwned<ClientConnection, TcpStream>);

    impl Read for Tls {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Tls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Io for Tls {
        fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
            self.0.sock.set_timeout(timeout)
        }

        /// close_notify, then the TCP side.
        fn close_write(&mut self) -> io::Result<()> {
            self.0.conn.send_close_notify();
            self.0.flush()?;
            self.0.sock.close_write()
        }
    }

    pub type Config = Arc<ClientConfig>;

    /// The client configuration: rustls with ring (as ureq's), offering only h2, with
    /// the roots of the PEM file `certificate`, or the bundled ones.
    pub fn config(certificate: Option<&str>) -> Result<Config, String> {
        let roots = match certificate {
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("OTLP certificate {path}: {e}"))?;
                for der in pem_certificates(&pem) {
                    let der = der.ok_or_else(|| format!("OTLP certificate {path}: bad PEM"))?;
                    roots
                        .add(CertificateDer::from(der))
                        .map_err(|e| format!("OTLP certificate {path}: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!("OTLP certificate {path}: no certificate in it"));
                }
                roots
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The DER of each CERTIFICATE block of a PEM text (None for one that does not
    /// decode); other blocks are skipped.
    fn pem_certificates(pem: &str) -> impl Iterator<Item = Option<Vec<u8>>> + '_ {
        pem.split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .map(|block| {
                let body = block.split("-----END CERTIFICATE-----").next()?;
                let text: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                super::base64_decode(&text)
            })
    }

    /// A TLS session on `tcp`, its handshake done by `deadline`, with h2 agreed.
    pub fn connect(
        mut tcp: TcpStream,
        host: &str,
        config: &Config,
        deadline: Instant,
    ) -> Result<Box<dyn Io>, Error> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Error::Protocol("not a TLS server name"))?;
        let mut session = ClientConnection::new(config.clone(), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        while session.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut).into());
            }
            tcp.set_timeout(left)?;
            session.complete_io(&mut tcp).map_err(super::timed_out)?;
        }
        if session.alpn_protocol() != Some(b"h2") {
            return Err(Error::Protocol(
                "the server did not agree to h2 over TLS (ALPN)",
            ));
        }
        Ok(Box::new(Tls(StreamOwned::new(session, tcp))))
    }
}

#[cfg(not(feature = "tls"))]
mod tls {
    use std::net::TcpStream;
    use std::time::Instant;

    use grpc_unary::h2::{Error, Io};

    pub type Config = ();

    /// Never called: [`super::Target::parse`] refuses https:// without TLS.
    pub fn config(_: Option<&str>) -> Result<Config, String> {
        Err("https:// needs the tls feature, which this build lacks".into())
    }

    /// Never called, as [`config`].
    pub fn connect(_: TcpStream, _: &str, _: &Config, _: Instant) -> Result<Box<dyn Io>, Error> {
        Err(Error::Protocol("https:// needs the tls feature"))
    }
}

/// A socket timeout reads as WouldBlock on Unix: say TimedOut.
#[cfg(feature = "tls")]
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::from(io::ErrorKind::TimedOut)
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://otel-collector:4317").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "otel-collector".into(),
                port: 4317
            }
        );
        assert_eq!(t.authority(), "otel-collector:4317");
        let t = Target::parse("http://[::1]:4317/v1/traces").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 4317));
        assert_eq!(t.authority(), "[::1]:4317");
        assert!(Target::parse("ftp://c:4317").is_err());
        if cfg!(feature = "tls") {
            assert_eq!(Target::parse("https://c").unwrap().port, 443);
        }
    }

    #[test]
    fn a_name_is_looked_up_within_the_deadline_and_an_address_as_it_is() {
        // Many times: the answer must not be missed, whichever thread runs first.
        for _ in 0..20 {
            let started = Instant::now();
            let addrs = lookup("localhost", 4317, started + Duration::from_secs(5)).unwrap();
            assert!(!addrs.is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        let addrs = lookup("127.0.0.1", 4317, Instant::now()).unwrap();
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 4317))]);
    }

    #[test]
    fn retry_info_and_messages_are_read() {
        // google.rpc.Status{code: 14, details: [Any{RetryInfo{retry_delay: 1.5 s}}]}
        let duration = [0x08, 0x01, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01];
        let mut info = vec![0x0a, duration.len() as u8];
        info.extend(duration);
        let url = b"type.googleapis.com/google.rpc.RetryInfo";
        let mut any = vec![0x0a, url.len() as u8];
        any.extend(url);
        any.extend([0x12, info.len() as u8]);
        any.extend(&info);
        let mut status = vec![0x08, 14, 0x1a, any.len() as u8];
        status.extend(&any);
        let encoded = base64(&status);
        assert_eq!(
            retry_delay(encoded.as_bytes()),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_delay(b"CA4"), None, "a Status without details");
        assert_eq!(retry_delay(b"!!"), None);
        assert_eq!(percent_decode(b"try%20later%0A%zz%4"), "try later\n%zz%4");
        assert_eq!(code_name(14), "UNAVAILABLE");
    }

    fn client() -> GrpcClient {
        let target = Target::parse("http://127.0.0.1:9").unwrap();
        GrpcClient::new(Signal::Traces, target, None, Duration::from_secs(1)).unwrap()
    }

    fn response(status: u16, fields: &[(&str, &str)], body: &[u8]) -> h2::Response {
        h2::Response {
            status,
            headers: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            trailers: Vec::new(),
        }
    }

    #[test]
    fn any_reply_maps_to_a_status_the_exporter_knows() {
        let client = client();
        let none = Secrets::default();
        let status = |r: h2::Response| client.reply(r, &none).status().as_u16();
        // Not a gRPC reply: retried as UNAVAILABLE, or dropped; never a success. Values
        // h2 refuses (1000, 42) do not panic here either.
        for (http, expected) in [
            (503, 503),
            (429, 429),
            (502, 502),
            (504, 504),
            (204, 400),
            (404, 400),
            (302, 400),
            (1000, 400),
            (42, 400),
        ] {
            assert_eq!(status(response(http, &[], b"")), expected, "{http}");
        }
        assert_eq!(status(response(200, &[], b"")), 500, "no grpc-status");
        assert_eq!(status(response(200, &[("grpc-status", "14")], b"")), 503);
        assert_eq!(status(response(200, &[("grpc-status", "3")], b"")), 400);
        assert_eq!(status(response(200, &[("grpc-status", "x")], b"")), 500);
        // OK: the message without its 5-byte prefix; a compressed or short one dropped.
        let ok = [("grpc-status", "0")];
        let body = |r: h2::Response| client.reply(r, &none).into_body();
        assert_eq!(body(response(200, &ok, b"\0\0\0\0\x02hi")), &b"hi"[..]);
        assert_eq!(body(response(200, &ok, b"\x01\0\0\0\x02hi")), &b""[..]);
        assert_eq!(body(response(200, &ok, b"\0\0")), &b""[..]);
    }

    #[test]
    fn the_wait_after_a_misbehaving_server_doubles_to_its_cap_and_a_reply_ends_it() {
        let mut slot = Slot::default();
        assert_eq!(slot.waiting(), None);
        slot.after(&h2::Error::Io(io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(slot.waiting(), None, "a collector that is down: no wait");
        slot.after(&h2::Error::Reset(7));
        assert_eq!(slot.waiting(), None);
        let mut waits = Vec::new();
        for _ in 0..8 {
            slot.after(&h2::Error::Calm("a flood"));
            let left = slot.waiting().unwrap();
            waits.push(left.as_millis().div_ceil(1000));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        slot.replied();
        assert_eq!(slot.waiting(), None);
        slot.after(&h2::Error::Protocol("bad"));
        assert!(slot.waiting().unwrap() <= BACKOFF_FIRST);
    }

    /// What a connection wrote, and whether it ended in a close (not a reset).
    type Seen = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

    /// A server on loopback that answers every connection with SETTINGS and a flood of
    /// PINGs, and keeps what each connection wrote, until it closed.
    fn flooding_server() -> (SocketAddr, Seen) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(mut socket) = socket else { return };
                let kept = kept.clone();
                thread::spawn(move || {
                    let mut flood = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
                    for _ in 0..1000 {
                        flood.extend([0, 0, 8, 6, 0, 0, 0, 0, 0]);
                        flood.extend(b"12345678");
                    }
                    let _ = socket.write_all(&flood);
                    socket
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let mut written = Vec::new();
                    let closed = socket.read_to_end(&mut written).is_ok();
                    kept.lock().unwrap().push((written, closed));
                });
            }
        });
        (addr, seen)
    }

    #[test]
    fn a_flooding_server_is_told_to_calm_down_and_not_reconnected_to_at_once() {
        let (addr, seen) = flooding_server();
        let target = Target::parse(&format!("http://{addr}")).unwrap();
        let client = GrpcClient::new(Signal::Traces, target, None, Duration::from_secs(5)).unwrap();
        let request = || {
            Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/v1/traces"))
                .body(Bytes::from_static(b"batch"))
                .unwrap()
        };
        let first = client.send(request()).unwrap_err().to_string();
        assert!(first.contains("ENHANCE_YOUR_CALM"), "{first}");
        let started = Instant::now();
        let second = client.send(request()).unwrap_err().to_string();
        assert!(second.contains("not connecting again"), "{second}");
        assert!(started.elapsed() < Duration::from_millis(500));
        // The one connection, closed with GOAWAY ENHANCE_YOUR_CALM, the last thing
        // written: our side ended after it, not reset (the server read to its end).
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(100));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];
        assert!(seen[0].0.ends_with(&goaway), "{:?}", seen[0]);
        assert!(seen[0].1, "closed, not reset");
    }

    #[test]
    fn text_from_the_server_is_scrubbed_of_secrets_controls_and_length() {
        let mut secrets = Secrets::default();
        secrets.add(b"Bearer s3cret-token-123");
        secrets.add(b"wood-shop");
        secrets.add(b"");
        let scrub = |text: &str| secrets.scrub(text);
        assert_eq!(
            scrub("echo: authorization=Bearer s3cret-token-123, x-tenant=wood-shop"),
            "echo: authorization=REDACTED, x-tenant=REDACTED"
        );
        // The token alone; split by control or bidi characters; as percent-decoded.
        assert_eq!(scrub("token s3cret-token-123!"), "token REDACTED!");
        assert_eq!(scrub("s3cret-\u{7}token\u{202e}-123"), "REDACTED");
        assert_eq!(
            scrub(&percent_decode(b"Bearer%20s3cret%2Dtoken-123")),
            "REDACTED"
        );
        // Terminal escapes, new lines and reordering characters are gone.
        assert_eq!(
            scrub("a\u{1b}[31mred\r\nb\u{2066}c\u{200f}d\u{61c}"),
            "a[31mredbcd"
        );
        // A URL's user information, as everywhere else.
        assert_eq!(
            scrub("see http://u:pw@proxy:8080/x"),
            "see http://REDACTED:REDACTED@proxy:8080/x"
        );
        // Bounded, on a character boundary, after the replacing: a secret across the
        // cut is not left half shown.
        let long = format!(
            "{}Bearer s3cret-token-123{}",
            "é".repeat(250),
            "x".repeat(600)
        );
        let cut = scrub(&long);
        assert!(cut.len() <= MAX_PEER_TEXT, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert!(!cut.contains("s3cret") && cut.contains("REDACTED"), "{cut}");
        assert!(!scrub(&"é".repeat(1000)).contains('\u{fffd}'));
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
