//! The worker's HTTP transport: one ureq agent with explicit timeouts and a resolver
//! that keeps names for a while, shared by both clients; the trace headers sent with
//! each request and one CLIENT span per attempt (named by the caller's [`Route`]); and
//! what the transport said, as a [`Reply`] or a [`SendError`] (the retry policy is in
//! [`crate::cycle::retry`]).
//!
//! The clients in [`crate::services::orders`] and [`crate::services::stock`] decide what a reply means for
//! their calls, turning its status into a [`CallError`] through
//! [`Call::from_status`], the one mapping both share.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ureq::Agent;
use ureq::http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};

use crate::services::resolve::{Resolver, before_sending, unsent_cause};
use crate::telemetry::instrument::{HttpAttempt, propagation_headers};

/// The headers every call sends, made once (not parsed again for every request).
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Longest piece of a reply body quoted in a log line.
const QUOTE_LIMIT: usize = 200;

/// A service's route as telemetry names it: the CLIENT span's name (`{method}
/// {url.template}`) and the `url.template`. Each client names its own routes.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub span_name: &'static str,
    pub template: &'static str,
}

/// A reply whose status line arrived.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The body, or what went wrong reading it (too large, cut off, timed out).
    pub body: Result<Vec<u8>, String>,
    /// `Retry-After` in seconds, when the service sent one.
    pub retry_after: Option<Duration>,
}

impl Reply {
    /// The body for a log line: the `error` field of a JSON reply, else the text, quoted and cut.
    pub fn describe(&self) -> String {
        match &self.body {
            Ok(bytes) => describe_body(bytes),
            Err(e) => format!("(body unreadable: {e})"),
        }
    }
}

/// A reply with `status` and `body`, for the clients' tests.
#[cfg(test)]
pub(crate) fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: Ok(body.as_bytes().to_vec()),
        retry_after: None,
    }
}

/// A request that got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing reached the server: connection refused, name not resolved, connect or
    /// send timed out. Safe to repeat any request.
    NotSent(String),
    /// The request may have reached the server, but no reply came (timeout while
    /// waiting, connection dropped). Whether a non-idempotent request took effect is unknown.
    NoReply(String),
    /// Nothing was sent because the process ran out of a resource (file descriptors,
    /// memory, threads) before the request could leave: no call will work until some
    /// are freed, so the cycle stops taking orders.
    NoResources(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotSent(d) => write!(f, "not sent: {d}"),
            SendError::NoReply(d) => write!(f, "no reply: {d}"),
            SendError::NoResources(d) => write!(f, "not sent: {d}"),
        }
    }
}

/// What a failed call means for its caller, named by what the caller does next.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The service refused the request for a business reason: record it, move on.
    Rejected { status: u16, reason: String },
    /// Nothing was changed and a later attempt may work: retry, then leave for later.
    Transient {
        detail: String,
        retry_after: Option<Duration>,
        /// The attempt failed only after more than the HTTP timeout (a sign of overload).
        slow: bool,
        /// The status the service answered with; `None` when it did not answer.
        status: Option<u16>,
    },
    /// The request was sent and no reply came: the outcome cannot be known. Never repeat.
    InDoubt {
        detail: String,
        /// The status the service answered with (a `500` at its write); `None` when no
        /// reply came.
        status: Option<u16>,
    },
    /// An answer the contract does not list for this call (a redirect, `401`, `403`,
    /// `409`, `415`, `422`, an unknown `400`/`404` body, another status). Nothing was
    /// changed. About one order's call it is that order's problem unless the service
    /// gives it for other orders too (a wrong base URL); see
    /// [`crate::cycle::schedule::Health::record`]. About the list, it ends the cycle.
    Unexpected { status: u16, detail: String },
    /// Something no retry will fix in this cycle (the process out of resources): stop
    /// the cycle.
    Fatal { detail: String },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected { status, reason } => write!(f, "rejected ({status}): {reason}"),
            CallError::Transient { detail, .. } => write!(f, "{detail}"),
            CallError::InDoubt { detail, .. } => write!(f, "in doubt: {detail}"),
            CallError::Unexpected { detail, .. } | CallError::Fatal { detail } => {
                write!(f, "{detail}")
            }
        }
    }
}

/// A service as error messages name it: its name, and the variable (and flag) that
/// sets its base URL.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub service: &'static str,
    pub variable: &'static str,
}

/// One call, as its failures are told: what it is, the service, the URL it went to,
/// and the `error` texts with which the contract's service refuses a request on this
/// route (`400`/`404` JSON `{"error": ...}`): only those refuse the request; any other
/// `400` or `404` (an HTML page, another body) comes from something else than the
/// service's route, so the base URL is wrong.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub what: &'a str,
    pub target: Target,
    pub url: &'a str,
    pub refusals: &'a [&'a str],
}

impl Call<'_> {
    /// What a non-2xx reply means: a `400`/`404` with one of the route's
    /// [`refusals`](Call::refusals) refuses this request; the usual overload statuses
    /// are transient; anything else (an unknown `400`/`404`, a redirect, `401`, `403`,
    /// `409`, `415`, `422`, other `5xx`) is [`CallError::Unexpected`], said with the URL
    /// and what to check. `500` is transient: the Stock Service answers it before
    /// changing anything (but at a failed commit), and the idempotency key makes a
    /// repeat safe on a service that honours it.
    pub fn from_status(&self, reply: &Reply, slow: bool) -> CallError {
        let Call {
            what,
            target: Target { service, variable },
            ..
        } = *self;
        let url = crate::redact::url(self.url);
        match reply.status {
            400 | 404 if refusal(reply).is_some_and(|e| self.refusals.contains(&e.as_str())) => {
                CallError::Rejected {
                    status: reply.status,
                    reason: reply.describe(),
                }
            }
            400 | 404 => CallError::Unexpected {
                status: reply.status,
                detail: format!(
                    "{what} answered {} at {url}: {}; the {service} gives no such answer there: \
                     is {variable} the {service}'s base URL?",
                    reply.status,
                    short_body(reply)
                ),
            },
            408 | 429 | 500 | 502 | 503 | 504 => CallError::Transient {
                detail: format!("{what} answered {}: {}", reply.status, reply.describe()),
                retry_after: reply.retry_after,
                slow,
                status: Some(reply.status),
            },
            status => CallError::Unexpected {
                status,
                detail: format!(
                    "{what} answered {status} at {url}: {}: outside the {service}'s contract \
                     (if it answers every call so, check {variable})",
                    short_body(reply)
                ),
            },
        }
    }

    /// What a request that got no reply means: not sent is transient (with the next
    /// step to take), out of resources stops the cycle, and a lost reply is transient
    /// for a call that is safe to repeat, else in doubt (`elapsed`: how long it waited).
    pub fn send_failed(
        &self,
        error: SendError,
        slow: bool,
        repeatable: bool,
        elapsed: Duration,
    ) -> CallError {
        let Call {
            what,
            target: Target { service, variable },
            ..
        } = *self;
        let url = crate::redact::url(self.url);
        let transient = |detail| CallError::Transient {
            detail,
            retry_after: None,
            slow,
            status: None,
        };
        match error {
            // The handshake is part of connecting: a plain-HTTP server that waits for a
            // request line never answers a TLS hello.
            SendError::NotSent(words)
                if self.url.starts_with("https://") && words.starts_with("no connection") =>
            {
                transient(format!(
                    "{what} not sent to {url}: {words}, or no TLS handshake: is it a plain-HTTP \
                     port (then use http://)? is the {service} running there? check {variable}"
                ))
            }
            SendError::NotSent(words) => transient(format!(
                "{what} not sent to {url}: {words}; is the {service} running there? check {variable}"
            )),
            SendError::NoResources(words) => CallError::Fatal {
                detail: format!(
                    "{what} not sent to {url}: {words}; the worker is out of resources: \
                     free some or raise its limits"
                ),
            },
            SendError::NoReply(words) if repeatable => transient(format!(
                "{what} sent to {url}, no reply: {words}; is the {service} overloaded? \
                 it is tried again"
            )),
            SendError::NoReply(words) => CallError::InDoubt {
                detail: format!(
                    "{what} sent to {url}, no reply after {} ms: {words}",
                    elapsed.as_millis()
                ),
                status: None,
            },
        }
    }
}

/// The `error` field of a JSON reply body, if it has one.
fn refusal(reply: &Reply) -> Option<String> {
    let bytes = reply.body.as_ref().ok()?;
    match serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()?
        .get("error")?
    {
        serde_json::Value::String(e) => Some(e.clone()),
        _ => None,
    }
}

/// A reply's body for a message about a wrong URL: its start only (an HTML error page
/// says little past its title).
fn short_body(reply: &Reply) -> String {
    let described = reply.describe();
    match described.char_indices().nth(SHORT_QUOTE) {
        Some((at, _)) => format!("{}…", &described[..at]),
        None => described,
    }
}

/// Longest piece of a body quoted in a message about a wrong URL.
const SHORT_QUOTE: usize = 80;

/// The agent and the timeouts, shared by both clients (cloning is cheap).
#[derive(Clone)]
pub struct Http {
    agent: Agent,
    timeout: Duration,
    /// The agent's resolver, to forget a name that could not be reached.
    resolver: Resolver,
    /// Set while a reply that said `Connection: close` is read: its connection then
    /// waits for the server's close when it is dropped ([`Steady`]'s linger).
    linger: Arc<AtomicBool>,
}

impl Http {
    /// One agent for the process: connecting is bounded by `timeout`; each call sets
    /// the rest. Statuses are returned, not turned into errors, and redirects are not
    /// followed (the worker's endpoints never redirect; a redirect means a wrong URL).
    /// Names are resolved by [`Resolver`]: once per [`crate::services::resolve::NAME_TTL`], not on
    /// a thread per request as ureq's own resolver does when bounded by a timeout.
    pub fn new(timeout: Duration) -> Http {
        Http::with_resolver(timeout, Resolver::new())
    }

    /// [`Http::new`] with names kept for `ttl` instead of [`crate::services::resolve::NAME_TTL`],
    /// and so connections reused for as long at most (for tests).
    pub fn with_name_ttl(timeout: Duration, ttl: Duration) -> Http {
        Http::with_resolver(timeout, Resolver::with_ttl(ttl))
    }

    fn with_resolver(timeout: Duration, resolver: Resolver) -> Http {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(timeout))
            .timeout_resolve(Some(timeout))
            // Between orders a connection is reused within milliseconds; one idle for
            // longer may be closed by the server at the very moment it is reused, and a
            // decrease sent into that race ends in doubt. Open a fresh one instead.
            .max_idle_age(Duration::from_secs(1))
            .user_agent(concat!("ordermanagement/", env!("CARGO_PKG_VERSION")))
            .build();
        let linger = Arc::new(AtomicBool::new(false));
        let connector = BeforeSending(DefaultConnector::new()).chain(SteadyTimeouts {
            resolver: resolver.clone(),
            linger: linger.clone(),
        });
        let agent = Agent::with_parts(config, connector, resolver.clone());
        Http {
            agent,
            timeout,
            resolver,
            linger,
        }
    }

    /// The HTTP timeout this agent was built with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a call started at `started` took the whole HTTP timeout (a sign of
    /// overload): a call cut by it counts, although the socket's timeout may end it up
    /// to [`TIMEOUT_GRID`] before the deadline (see [`SteadyTimeouts`]).
    pub fn slow_since(&self, started: std::time::Instant) -> bool {
        started.elapsed() + TIMEOUT_GRID >= self.timeout
    }

    /// `GET url`, the whole call bounded by the HTTP timeout. `route` names the
    /// call in telemetry; `resend` is the attempt's number (0 for the first).
    pub fn get(
        &self,
        url: &str,
        route: Route,
        resend: u32,
        limit: u64,
    ) -> Result<Reply, SendError> {
        let attempt = HttpAttempt::start(route.span_name, "GET", route.template, url, resend);
        let request = with_trace(self.agent.get(url))
            .header(ACCEPT, JSON)
            .config()
            .timeout_global(Some(self.timeout))
            .build();
        self.reply(url, request.call(), limit, attempt, self.waits(None))
    }

    /// `PUT url` with a JSON body, the whole call bounded by the HTTP timeout.
    pub fn put_json(
        &self,
        url: &str,
        route: Route,
        resend: u32,
        body: &[u8],
        limit: u64,
    ) -> Result<Reply, SendError> {
        let attempt = HttpAttempt::start(route.span_name, "PUT", route.template, url, resend);
        let request = with_trace(self.agent.put(url))
            .header(CONTENT_TYPE, JSON)
            .header(ACCEPT, JSON)
            .config()
            .timeout_global(Some(self.timeout))
            .build();
        self.reply(url, request.send(body), limit, attempt, self.waits(None))
    }

    /// `POST url` with a JSON body and an idempotency key. Connecting and sending are
    /// bounded by the HTTP timeout; the reply may take up to `reply_timeout`.
    #[allow(clippy::too_many_arguments)]
    pub fn post_json(
        &self,
        url: &str,
        route: Route,
        resend: u32,
        body: &[u8],
        idempotency_key: &str,
        reply_timeout: Duration,
        limit: u64,
    ) -> Result<Reply, SendError> {
        let attempt = HttpAttempt::start(route.span_name, "POST", route.template, url, resend);
        let request = with_trace(self.agent.post(url))
            .header(CONTENT_TYPE, JSON)
            .header(ACCEPT, JSON)
            .header(IDEMPOTENCY_KEY, idempotency_key)
            .config()
            .timeout_send_request(Some(self.timeout))
            .timeout_send_body(Some(self.timeout))
            .timeout_recv_response(Some(reply_timeout))
            .timeout_recv_body(Some(self.timeout))
            .build();
        let waits = self.waits(Some(reply_timeout));
        self.reply(url, request.send(body), limit, attempt, waits)
    }

    /// The limits a call runs under, for what its errors say.
    fn waits(&self, reply: Option<Duration>) -> Waits {
        Waits {
            call: self.timeout,
            reply,
        }
    }

    /// The reply to a call to `url`. When the request could not be sent, the address its
    /// host's name was resolved to may be stale: the next call looks it up again.
    fn reply(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
        attempt: HttpAttempt,
        waits: Waits,
    ) -> Result<Reply, SendError> {
        let reply = read_reply(result, limit, attempt, waits, &self.linger);
        if let Err(SendError::NotSent(_) | SendError::NoResources(_)) = &reply
            && let Ok(uri) = url.parse::<ureq::http::Uri>()
            && let Some(host) = uri.host()
        {
            self.resolver.forget(host);
        }
        reply
    }
}

/// Adds the current trace's `traceparent` (and `tracestate`, `baggage`) headers, put in
/// the request's header map directly: through the builder, each header moved the whole
/// request twice, about 2,500 instructions a header.
fn with_trace<B>(mut request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    let headers = propagation_headers();
    if let Some(map) = request.headers_mut() {
        for (name, value) in headers {
            // Known, valid names: taken as they are, not parsed again for every request.
            let _ = map.try_append(ureq::http::HeaderName::from_static(name), value);
        }
    }
    request
}

/// The limits a call ran under: the HTTP timeout (`--timeout`), and for a decrease the
/// wait for its reply (`--decrease-timeout`).
#[derive(Debug, Clone, Copy)]
struct Waits {
    call: Duration,
    reply: Option<Duration>,
}

fn read_reply(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    limit: u64,
    attempt: HttpAttempt,
    waits: Waits,
    linger: &AtomicBool,
) -> Result<Reply, SendError> {
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            attempt.finish(None, Some(error_type(&e)));
            return Err(classify(&e, waits));
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    // A reply that says `Connection: close`: its connection (dropped as its body ends)
    // first waits for the server's close, so that the next call does not reach a
    // server still tearing this request down (see [`Steady`]). Measured on the real
    // services: waiting only after error answers, 4 drains of 10 still kept one more
    // database connection out of the Stock Service's pool; after every reply, none
    // of 8 (docs/how-it-works.md).
    linger.store(says_close(response.headers()), Ordering::Relaxed);
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => format!("larger than {limit} bytes"),
            other => other.to_string(),
        });
    // A body cut short (too long, broken, timed out) leaves its connection to the
    // response, closed without a wait.
    if body.is_err() {
        linger.store(false, Ordering::Relaxed);
    }
    drop(response);
    linger.store(false, Ordering::Relaxed);
    attempt.finish(Some(status), body.as_ref().err().map(|_| "response_body"));
    Ok(Reply {
        status,
        body,
        retry_after,
    })
}

/// Whether a reply's `Connection` header holds the `close` option.
fn says_close(headers: &ureq::http::HeaderMap) -> bool {
    headers.get_all("connection").iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|option| option.trim().eq_ignore_ascii_case("close"))
        })
    })
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (`Sun, 06 Nov 1994 08:49:37
/// GMT`, the IMF-fixdate every current server sends) turned into the time left until
/// it, zero when it is past. The obsolete RFC 850 and asctime forms are not read.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = imf_fixdate(value)?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn imf_fixdate(text: &str) -> Option<u64> {
    let (_weekday, rest) = text.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days since 1970-01-01 of a civil date (the inverse of logging's conversion).
    let (y, mp) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3_600 + m * 60 + s)
}

/// `error.type` of a call that got no reply.
fn error_type(error: &ureq::Error) -> &'static str {
    match error {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::HostNotFound => "host_not_found",
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed => "connection_error",
        ureq::Error::Protocol(_) => "protocol_error",
        _ => "_OTHER",
    }
}

/// Tells a request that never reached the server from one that may have: failures to
/// resolve, connect (TLS handshake and proxy included) or finish sending the request.
/// Anything else after the connection was made may have reached the server. An I/O
/// error met before the connection was made (marked by [`BeforeSending`] and the
/// resolver) is not sent whatever its kind; one that says the process is out of file
/// descriptors, memory or threads is [`SendError::NoResources`].
fn classify(error: &ureq::Error, waits: Waits) -> SendError {
    use ureq::Error as E;
    use ureq::Timeout as T;
    let detail = in_words(error, waits);
    if let E::Io(e) = error
        && let Some(cause) = unsent_cause(e)
    {
        return if out_of_resources(cause) {
            SendError::NoResources(detail)
        } else {
            SendError::NotSent(detail)
        };
    }
    match error {
        // The request never fully left: the server cannot have a complete request.
        E::Timeout(T::Resolve | T::Connect | T::SendRequest | T::SendBody) => {
            SendError::NotSent(detail)
        }
        E::Timeout(_) => SendError::NoReply(detail),
        #[cfg(feature = "tls")]
        E::Rustls(_) => SendError::NotSent(detail),
        E::HostNotFound
        | E::ConnectionFailed
        | E::BadUri(_)
        | E::Http(_)
        | E::Tls(_)
        | E::InvalidProxyUrl
        | E::ConnectProxyFailed(_)
        | E::RequireHttpsOnly(_)
        | E::TlsRequired => SendError::NotSent(detail),
        E::Io(e) if not_connected(e.kind()) => SendError::NotSent(detail),
        _ => SendError::NoReply(detail),
    }
}

/// What happened to a request that got no reply, in words, with the setting whose
/// limit ran out: "connection refused", "no reply within 5 s (--timeout)".
fn in_words(error: &ureq::Error, waits: Waits) -> String {
    use ureq::Error as E;
    use ureq::Timeout as T;
    let secs = |d: Duration| format!("{} s", d.as_secs_f64());
    let call = secs(waits.call);
    match error {
        E::Timeout(T::Resolve) => format!("the name was not resolved within {call} (--timeout)"),
        E::Timeout(T::Connect) => format!("no connection within {call} (--timeout)"),
        E::Timeout(T::SendRequest | T::SendBody) => {
            format!("the request could not be sent within {call} (--timeout)")
        }
        E::Timeout(T::RecvResponse) if let Some(reply) = waits.reply => {
            format!("no reply within {} (--decrease-timeout)", secs(reply))
        }
        E::Timeout(T::RecvBody) => {
            format!("the reply's body did not come within {call} (--timeout)")
        }
        E::Timeout(_) => format!("no reply within {call} (--timeout)"),
        E::HostNotFound => "the host name was not found".into(),
        E::Io(e) => io_in_words(unsent_cause(e).unwrap_or(e)),
        E::Protocol(e) => format!("the reply is not HTTP/1.1 ({e})"),
        #[cfg(feature = "tls")]
        E::Rustls(e) => {
            let text = e.to_string();
            crate::redact::not_tls(&text)
                .unwrap_or_else(|| format!("the TLS handshake failed ({text})"))
        }
        other => other.to_string(),
    }
}

/// An I/O error in words; the system's own text for the rare ones.
fn io_in_words(error: &io::Error) -> String {
    use io::ErrorKind as K;
    let words = match error.raw_os_error() {
        Some(libc::EMFILE) => "too many open files (EMFILE: the process's limit, ulimit -n)",
        Some(libc::ENFILE) => "too many open files in the system (ENFILE)",
        Some(libc::ENOMEM) => "out of memory (ENOMEM)",
        Some(libc::EAGAIN) => "out of resources (EAGAIN: a thread or socket could not be made)",
        Some(libc::ENOBUFS) => "out of buffer space (ENOBUFS)",
        _ => match error.kind() {
            K::ConnectionRefused => "connection refused",
            K::ConnectionReset => "connection reset by the server",
            K::ConnectionAborted => "connection aborted",
            K::UnexpectedEof | K::BrokenPipe => "connection closed by the server",
            K::HostUnreachable => "host unreachable",
            K::NetworkUnreachable => "network unreachable",
            K::NetworkDown => "network down",
            K::AddrNotAvailable => "address not available",
            _ => {
                let text = error.to_string();
                return crate::redact::not_tls(&text).unwrap_or(text);
            }
        },
    };
    words.into()
}

/// An error that says the process (or the system) is out of file descriptors, memory,
/// threads or buffers: `EMFILE`, `ENFILE`, `ENOMEM`, `EAGAIN` (a thread or a socket
/// that could not be made), `ENOBUFS`.
fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::ENOBUFS)
    ) || error.kind() == io::ErrorKind::OutOfMemory
}

/// The first connector of the chain: ureq's own (a TCP connection, TLS on it), whose
/// I/O errors are marked as met before the request was sent ([`before_sending`]), so
/// that a socket that could not be opened (`EMFILE`) is not taken for a request that
/// got no reply.
#[derive(Debug)]
struct BeforeSending(DefaultConnector);

impl Connector<()> for BeforeSending {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        self.0.connect(details, chained).map_err(|e| match e {
            ureq::Error::Io(e) => ureq::Error::Io(before_sending(e)),
            // Whichever deadline it met (the call's own, for a GET), a connection or a TLS
            // handshake that took too long sent nothing.
            ureq::Error::Timeout(_) => ureq::Error::Timeout(ureq::Timeout::Connect),
            other => other,
        })
    }
}

/// I/O errors of the connect phase. `InvalidData` is how a failed TLS handshake (a bad
/// certificate) comes back; plain HTTP replies that cannot be parsed are
/// `Error::Protocol` instead.
fn not_connected(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::AddrNotAvailable
            | K::NetworkUnreachable
            | K::HostUnreachable
            | K::NetworkDown
            | K::PermissionDenied
            | K::InvalidData
            | K::NotFound
    )
}

/// A reply body for a log line: the `error` field of a JSON object if there is one,
/// else the text itself; cut to a readable length, control characters escaped.
pub fn describe_body(bytes: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(serde_json::Value::String(e)) = map.get("error")
    {
        return quote(e);
    }
    if bytes.is_empty() {
        return "(empty body)".into();
    }
    quote(&String::from_utf8_lossy(bytes))
}

fn quote(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.trim().chars().enumerate() {
        if i == QUOTE_LIMIT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The grid a socket's timeout is rounded down to (see [`SteadyTimeouts`]).
const TIMEOUT_GRID: Duration = Duration::from_millis(10);

/// Wraps every connection so that its socket timeouts are set only when they really
/// change. ureq hands each read and write the time left until the call's deadline,
/// which differs by microseconds from one call to the next, so it set `SO_RCVTIMEO`
/// and `SO_SNDTIMEO` before nearly every read and write: about six `setsockopt` per
/// order (`strace -c`), which a bare client does not make. Rounded down to a 10 ms
/// grid, the time left is the same for every call that takes less than 10 ms, and
/// ureq (which keeps the value last set) skips the system call. A timeout may so fire
/// up to 10 ms early; never later than the call's deadline.
///
/// It also gives each connection its end of life: a keep-alive connection is reused
/// only until the address it was opened to may have moved, when the answer the
/// resolver keeps for its host expires (or, for an IP address or an answer already
/// gone, the resolver's time to keep answers after the connection was opened; 30 s).
/// Past that the pool drops it, and the next request looks the name up again, so that a
/// name that moves is followed within about 30 s even while the old server keeps the
/// connection alive.
#[derive(Debug)]
struct SteadyTimeouts {
    resolver: Resolver,
    linger: Arc<AtomicBool>,
}

impl Connector<Box<dyn Transport>> for SteadyTimeouts {
    type Out = Steady;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Steady>, ureq::Error> {
        let opened = std::time::Instant::now();
        let until = self
            .resolver
            .expires(details.uri)
            .map_or(opened + self.resolver.ttl(), |expires| {
                expires.min(opened + self.resolver.ttl())
            });
        Ok(chained.map(|transport| Steady(transport, until, self.linger.clone())))
    }
}

/// A connection whose timeouts are rounded by [`steady`], reused until the instant it
/// holds (see [`SteadyTimeouts`]); dropped after a reply that said `Connection:
/// close` (the flag it holds, set by [`read_reply`]), it lingers for the server's
/// close. A reply with no body is not waited for: ureq drops its connection
/// before [`read_reply`] sees it (the worker's calls always get a body).
#[derive(Debug)]
struct Steady(Box<dyn Transport>, std::time::Instant, Arc<AtomicBool>);

/// The longest a connection waits for the server's close. The demo's services
/// (Werkzeug) close 10 ms after their reply (they first wait that long for stray
/// request bytes): 10.2 ms median, 11.9 ms at most, over 900 calls.
const LINGER_LIMIT: Duration = Duration::from_millis(25);

/// The pause after the server's close: its thread finishes tearing the request down
/// just after closing. Measured on the demo's Stock Service (a client sending the next
/// call after a quick `500`): after the close alone, 42 of 355 next calls began with
/// about 20 more live objects than usual; 5 ms after it, none of 364.
const AFTER_CLOSE: Duration = Duration::from_millis(5);

impl Drop for Steady {
    /// Reads to the server's close, at most [`LINGER_LIMIT`], when the flag is set.
    /// Why: docs/how-it-works.md, "retries and timeouts".
    fn drop(&mut self) {
        if self.2.swap(false, Ordering::Relaxed) {
            self.linger();
        }
    }
}

impl Steady {
    /// Reads until the server's close (then waits [`AFTER_CLOSE`]), a reset, or
    /// [`LINGER_LIMIT`]; what arrives is dropped. Kept out of line: the connection's
    /// drop is inlined in many places.
    #[inline(never)]
    fn linger(&mut self) {
        use ureq::unversioned::transport::time::Duration as Left;
        let until = std::time::Instant::now() + LINGER_LIMIT;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let buffers = self.0.buffers();
            let unread = buffers.input().len();
            buffers.input_consume(unread);
            let timeout = NextTimeout {
                after: Left::Exact(left),
                reason: ureq::Timeout::RecvBody,
                per_read: None,
                per_write: None,
            };
            // Bytes after the reply are dropped; the close, a reset or the limit ends it.
            match self.0.await_input(timeout) {
                Ok(true) => continue,
                Ok(false) => {
                    std::thread::sleep(AFTER_CLOSE);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl Transport for Steady {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.0.transmit_output(amount, steady(timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.0.await_input(steady(timeout))
    }

    /// Closed for the pool once past its end of life, so it is not reused.
    fn is_open(&mut self) -> bool {
        std::time::Instant::now() < self.1 && self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}

/// The time left, rounded down to [`TIMEOUT_GRID`] when at least two steps of it are
/// left (less is kept exact, so that a short wait is not cut to nothing).
fn steady(mut timeout: NextTimeout) -> NextTimeout {
    use ureq::unversioned::transport::time::Duration as Left;
    if let Left::Exact(left) = timeout.after
        && left >= 2 * TIMEOUT_GRID
    {
        let grid = TIMEOUT_GRID.as_nanos();
        let rounded = left.as_nanos() / grid * grid;
        timeout.after = Left::Exact(Duration::from_nanos(rounded as u64));
    }
    timeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn a_call_cut_by_the_rounded_timeout_still_counts_as_slow() {
        let http = Http::new(Duration::from_millis(300));
        let ago = |ms| std::time::Instant::now() - Duration::from_millis(ms);
        // The socket's timeout was 290 ms (300 rounded down): the call took it all.
        assert!(http.slow_since(ago(291)));
        assert!(http.slow_since(ago(400)));
        assert!(!http.slow_since(ago(200)));
    }

    #[test]
    fn a_timeout_is_rounded_down_to_the_grid_and_a_short_one_kept() {
        use ureq::unversioned::transport::time::Duration as Left;
        let left = |d: Duration| NextTimeout {
            after: Left::Exact(d),
            ..NextTimeout::default()
        };
        let ms = Duration::from_millis;
        let after = |t: NextTimeout| match t.after {
            Left::Exact(d) => Some(d),
            Left::NotHappening => None,
        };
        // Calls a few microseconds apart get the same value: no new setsockopt.
        for micros in [1, 40, 9_999] {
            let t = steady(left(Duration::from_secs(5) - Duration::from_micros(micros)));
            assert_eq!(after(t), Some(ms(4_990)));
        }
        assert_eq!(after(steady(left(ms(35_000)))), Some(ms(35_000)));
        assert_eq!(after(steady(left(ms(27)))), Some(ms(20)));
        // Never later than the deadline; a short wait is left as it is.
        assert_eq!(after(steady(left(ms(19)))), Some(ms(19)));
        assert_eq!(after(steady(left(Duration::ZERO))), Some(Duration::ZERO));
        assert_eq!(after(steady(NextTimeout::default())), None);
    }

    const WAITS: Waits = Waits {
        call: Duration::from_secs(5),
        reply: None,
    };

    #[test]
    fn what_happened_is_said_in_words_with_the_limit_that_ran_out() {
        use ureq::Error as E;
        use ureq::Timeout as T;
        let decrease = Waits {
            call: Duration::from_millis(500),
            reply: Some(Duration::from_secs(35)),
        };
        let io = |kind| E::Io(io::Error::from(kind));
        let cases = [
            (
                io(io::ErrorKind::ConnectionRefused),
                WAITS,
                "connection refused",
            ),
            (
                E::Io(before_sending(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                ))),
                WAITS,
                "connection refused",
            ),
            (
                E::Io(before_sending(io::Error::from_raw_os_error(libc::EMFILE))),
                WAITS,
                "too many open files (EMFILE: the process's limit, ulimit -n)",
            ),
            (
                io(io::ErrorKind::UnexpectedEof),
                WAITS,
                "connection closed by the server",
            ),
            (E::HostNotFound, WAITS, "the host name was not found"),
            (
                E::Timeout(T::Connect),
                WAITS,
                "no connection within 5 s (--timeout)",
            ),
            (
                E::Timeout(T::Global),
                WAITS,
                "no reply within 5 s (--timeout)",
            ),
            (
                E::Timeout(T::Connect),
                decrease,
                "no connection within 0.5 s (--timeout)",
            ),
            (
                E::Timeout(T::RecvResponse),
                decrease,
                "no reply within 35 s (--decrease-timeout)",
            ),
        ];
        for (error, waits, words) in cases {
            assert_eq!(in_words(&error, waits), words, "{error:?}");
        }
        let handshake = io::Error::new(
            io::ErrorKind::InvalidData,
            "received corrupt message of type InvalidContentType",
        );
        assert_eq!(
            in_words(&E::Io(before_sending(handshake)), WAITS),
            "the server does not speak TLS (a plain-HTTP port?): use http:// instead of https://"
        );
    }

    #[test]
    fn only_errors_before_the_request_left_are_not_sent() {
        use ureq::Error as E;
        use ureq::Timeout as T;
        let io = |kind| E::Io(io::Error::from(kind));
        let not_sent = [
            io(io::ErrorKind::ConnectionRefused),
            io(io::ErrorKind::InvalidData),
            io(io::ErrorKind::HostUnreachable),
            E::Timeout(T::Connect),
            E::Timeout(T::Resolve),
            E::Timeout(T::SendRequest),
            E::Timeout(T::SendBody),
            E::HostNotFound,
            E::ConnectionFailed,
            E::ConnectProxyFailed("refused".into()),
            E::TlsRequired,
        ];
        for e in &not_sent {
            assert!(matches!(classify(e, WAITS), SendError::NotSent(_)), "{e:?}");
        }
        let no_reply = [
            io(io::ErrorKind::ConnectionReset),
            io(io::ErrorKind::UnexpectedEof),
            io(io::ErrorKind::BrokenPipe),
            E::Timeout(T::RecvResponse),
            E::Timeout(T::RecvBody),
            E::Timeout(T::Global),
        ];
        for e in &no_reply {
            assert!(matches!(classify(e, WAITS), SendError::NoReply(_)), "{e:?}");
        }
        // Before the connection was made, any I/O error is not sent; running out of
        // descriptors, memory or threads is said apart. After it, the same is no reply.
        let os = |errno| E::Io(before_sending(io::Error::from_raw_os_error(errno)));
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::ENOBUFS,
        ] {
            assert!(
                matches!(classify(&os(errno), WAITS), SendError::NoResources(_)),
                "{errno}"
            );
            let after = E::Io(io::Error::from_raw_os_error(errno));
            assert!(
                matches!(classify(&after, WAITS), SendError::NoReply(_)),
                "{errno}"
            );
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::EACCES,
            libc::EINVAL,
            libc::ECONNRESET,
        ] {
            assert!(
                matches!(classify(&os(errno), WAITS), SendError::NotSent(_)),
                "{errno}"
            );
        }
    }

    /// A keep-alive HTTP server answering `[]` to every request; counts connections.
    fn keep_alive_server() -> (u16, Arc<AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    // Ends when the client closes the connection.
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";
                                if writer.write_all(reply).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// The route the tests' calls are named by.
    const ROOT: Route = Route {
        span_name: "GET /",
        template: "/",
    };

    type Events = Arc<std::sync::Mutex<Vec<(bool, Instant)>>>;

    /// A server that closes every connection as the demo's services do: it answers
    /// `status` with `Connection: close`, then closes `hold` later whatever the client
    /// does. Records when each request arrived and when each connection was closed
    /// (`true`).
    fn closing_server(status: &'static str, hold: Duration) -> (u16, Events) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = events.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    log.lock().unwrap().push((false, Instant::now()));
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
                    );
                    let _ = writer.write_all(reply.as_bytes());
                    std::thread::sleep(hold);
                    log.lock().unwrap().push((true, Instant::now()));
                    let _ = writer.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        (port, events)
    }

    /// Five calls to a server that closes `hold` after each reply; whether each request
    /// arrived after the previous connection was closed.
    fn after_each_close(http: Http, status: &'static str, hold: Duration) -> Vec<bool> {
        let (port, events) = closing_server(status, hold);
        let url = format!("http://127.0.0.1:{port}/");
        for _ in 0..5 {
            http.get(&url, ROOT, 0, 100).expect("an answer");
        }
        std::thread::sleep(hold + Duration::from_millis(50));
        let events = events.lock().unwrap().clone();
        let requests: Vec<Instant> = events.iter().filter(|e| !e.0).map(|e| e.1).collect();
        let closes: Vec<Instant> = events.iter().filter(|e| e.0).map(|e| e.1).collect();
        assert_eq!((requests.len(), closes.len()), (5, 5), "{events:?}");
        closes
            .iter()
            .zip(&requests[1..])
            .map(|(close, next)| next > close)
            .collect()
    }

    #[test]
    fn after_a_reply_that_says_close_the_next_call_waits_for_the_servers_close() {
        // The server closes 5 ms after each reply: every request arrives after the
        // previous connection was closed.
        let http = || Http::new(Duration::from_secs(2));
        let waited = after_each_close(
            http(),
            "500 INTERNAL SERVER ERROR",
            Duration::from_millis(5),
        );
        assert_eq!(waited, [true; 4]);
        // After a success too.
        let waited = after_each_close(http(), "200 OK", Duration::from_millis(5));
        assert_eq!(waited, [true; 4]);
        // A server that never closes holds a call for the limit at most.
        let (port, _) = closing_server("503 SERVICE UNAVAILABLE", Duration::from_secs(3));
        let url = format!("http://127.0.0.1:{port}/");
        let started = Instant::now();
        let http = Http::new(Duration::from_secs(2));
        assert_eq!(http.get(&url, ROOT, 0, 100).expect("an answer").status, 503);
        let took = started.elapsed();
        assert!(
            took >= LINGER_LIMIT && took < LINGER_LIMIT + Duration::from_millis(500),
            "{took:?}"
        );
    }

    #[test]
    fn a_kept_alive_connection_is_not_reused_past_the_names_lifetime() {
        // Requests every 40 ms for 1 s: never idle long enough to be dropped as idle.
        let connections = |http: &Http, host: &str| {
            let (port, accepted) = keep_alive_server();
            let url = format!("http://{host}:{port}/");
            let end = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < end {
                let reply = http.get(&url, ROOT, 0, 100).expect("an answer");
                assert_eq!(reply.status, 200);
                std::thread::sleep(Duration::from_millis(40));
            }
            accepted.load(Ordering::SeqCst)
        };
        let kept = Http::new(Duration::from_secs(2));
        assert_eq!(
            connections(&kept, "127.0.0.1"),
            1,
            "one connection throughout"
        );
        // Names kept 300 ms: a new connection about every 300 ms, by address or name.
        let short = Http::with_name_ttl(Duration::from_secs(2), Duration::from_millis(300));
        for host in ["127.0.0.1", "localhost"] {
            let n = connections(&short, host);
            assert!((3..=5).contains(&n), "{host}: {n} connections in 1 s");
        }
    }

    #[test]
    fn a_name_that_cannot_be_reached_is_looked_up_again() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let http = Http::new(Duration::from_secs(2));
        let result = http.get(&format!("http://localhost:{port}/"), ROOT, 0, 100);
        assert!(matches!(result, Err(SendError::NotSent(_))), "{result:?}");
        assert!(!http.resolver.is_kept(&format!("localhost:{port}")));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        use std::time::{SystemTime, UNIX_EPOCH};
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(imf_fixdate(date), Some(784_111_777));
        assert_eq!(
            parse_retry_after(date, at(784_111_777 - 30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(date, at(784_111_777 + 5)),
            Some(Duration::ZERO)
        );
        assert_eq!(imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            imf_fixdate("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "soon",
            "-5",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn bodies_are_described_safely() {
        assert_eq!(
            describe_body(br#"{"error": "Insufficient stock"}"#),
            "Insufficient stock"
        );
        assert_eq!(describe_body(b""), "(empty body)");
        assert_eq!(
            describe_body(b"<h1>Bad\nRequest</h1>"),
            "<h1>Bad\\nRequest</h1>"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            describe_body(long.as_bytes()).chars().count(),
            QUOTE_LIMIT + 1
        );
        assert!(describe_body(&[0xff, 0xfe, b'a']).ends_with('a'));
    }
}
