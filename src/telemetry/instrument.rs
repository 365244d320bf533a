//! The instrumentation the worker calls: spans ([`Scope`], [`OrderSpan`], one
//! [`HttpAttempt`] per request), events, the metric [`instruments`], and the headers
//! that carry the trace to the services. Only the `opentelemetry` API is used here, and
//! the SDK's tracer type: the providers behind it are set (or left no-op), and the
//! tracer set, by [`crate::telemetry`] at start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use opentelemetry::{KeyValue, Value};

/// Whether any signal is exported: until [`activate`] is called,
/// spans, span attributes, baggage and measurements are not even built, so that a
/// worker without a collector spends nothing per order on telemetry.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turns the instrumentation on; called by [`crate::telemetry::Telemetry::init`]
/// before it sets the providers.
pub fn activate() {
    ACTIVE.store(true, Ordering::Relaxed);
}

/// Whether the instrumentation is on (see [`activate`]).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The attribute naming a replica's shard (`2/4`), on the resource and on each cycle.
pub fn shard_attribute(shard: impl std::fmt::Display) -> KeyValue {
    KeyValue::new("ordermanagement.shard", shard.to_string())
}

/// A header's name and its value, ready for the request's header map.
pub type Header = (&'static str, ureq::http::HeaderValue);

/// Headers to add to a request so that the services continue the current trace (none
/// with the instrumentation off).
pub fn propagation_headers() -> Vec<Header> {
    if !active() {
        return Vec::new();
    }
    opentelemetry::Context::map_current(context_headers)
}

/// What the W3C propagators (tracecontext, and baggage unless OTEL_PROPAGATORS leaves
/// it out) would inject for `cx`, written directly: a composite propagator's generic
/// path cost about 8,000 instructions a request, `format!` of the ids and the
/// baggage's entries about 5,000. No global propagator is set or read.
fn context_headers(cx: &opentelemetry::Context) -> Vec<Header> {
    use opentelemetry::trace::TraceContextExt;
    let mut headers = Vec::with_capacity(2);
    let span = cx.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        headers.extend(traceparent(span_context).map(|value| ("traceparent", value)));
        let state = span_context.trace_state().header();
        if !state.is_empty() {
            // A trace state is made of header-safe text (the type checks it).
            let value = ureq::http::HeaderValue::try_from(state).ok();
            headers.extend(value.map(|value| ("tracestate", value)));
        }
    }
    if let Some(BaggageHeader(value)) = cx.get::<BaggageHeader>() {
        headers.push(("baggage", value.clone()));
    }
    headers
}

/// The `baggage` header of an order's requests, kept in its context: made once when the
/// order's span starts, not on every request, and never in the context's
/// [`opentelemetry::baggage::Baggage`], whose every entry costs a hash map, a random
/// hasher and a check of each byte of its key (5,000 instructions an order). Nothing in
/// the worker reads that baggage: the header is all it is for. Each request takes a
/// copy of the value that shares its bytes.
struct BaggageHeader(ureq::http::HeaderValue);

/// The `baggage` header's value for `entries`, as the W3C baggage propagator writes it;
/// `None` when there are none, or the propagator is off (then they are not even made).
fn baggage_header(entries: impl FnOnce() -> Vec<KeyValue>) -> Option<String> {
    if !BAGGAGE.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let entries = entries();
    if entries.is_empty() {
        return None;
    }
    plain_baggage(&entries).or_else(|| {
        use opentelemetry::baggage::BaggageExt;
        use opentelemetry::propagation::TextMapPropagator;
        let mut encoded = std::collections::HashMap::new();
        let cx = opentelemetry::Context::new().with_baggage(entries);
        opentelemetry_sdk::propagation::BaggagePropagator::new().inject_context(&cx, &mut encoded);
        encoded.remove("baggage")
    })
}

/// The `baggage` header's value when every entry is plain (the worker's own entry, the
/// order id, is: a token and a number): `key=value` pairs joined by commas, with no
/// percent-encoding needed. `None` when an entry needs the propagator's encoding
/// (other characters, a key given twice).
fn plain_baggage(entries: &[KeyValue]) -> Option<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let mut value = String::with_capacity(48);
    for (i, kv) in entries.iter().enumerate() {
        let repeated = entries.iter().take(i).any(|earlier| earlier.key == kv.key);
        if repeated || !plain(kv.key.as_str()) {
            return None;
        }
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(kv.key.as_str());
        value.push('=');
        match &kv.value {
            // A number's digits (and sign) are plain: written as they are, without
            // formatting them into a string of their own first.
            Value::I64(n) => push_decimal(&mut value, *n),
            other => {
                let text = other.as_str();
                if !plain(&text) {
                    return None;
                }
                value.push_str(&text);
            }
        }
    }
    // Within the propagator's limits, which it applies itself otherwise.
    (entries.len() <= 64 && value.len() <= 8192).then_some(value)
}

/// `n` in decimal, as `Display` writes it.
fn push_decimal(text: &mut String, n: i64) {
    if n < 0 {
        text.push('-');
    }
    let mut digits = [0u8; 20];
    let mut rest = n.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(digit) = digits.get_mut(start) {
            *digit = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in digits.get(start..).unwrap_or_default() {
        text.push(char::from(digit));
    }
}

/// The `traceparent` header of `span`: `00-{trace id}-{span id}-{flags}`, 55
/// characters, the flags only saying whether the span is sampled.
fn traceparent(span: &opentelemetry::trace::SpanContext) -> Option<ureq::http::HeaderValue> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let trace = span.trace_id().to_bytes();
    let id = span.span_id().to_bytes();
    // The trace id's digits from offset 3, the span id's from 36.
    let digits = trace.iter().zip((3..).step_by(2));
    for (&b, at) in digits.chain(id.iter().zip((36..).step_by(2))) {
        if let Some([high, low]) = text.get_mut(at..at + 2) {
            *high = DIGITS[usize::from(b >> 4)];
            *low = DIGITS[usize::from(b & 0x0f)];
        }
    }
    if span.is_sampled() {
        text[54] = b'1';
    }
    // Hex digits and dashes: always a valid value.
    ureq::http::HeaderValue::from_bytes(&text).ok()
}

/// Whether the baggage propagator is on (OTEL_PROPAGATORS lists it, or is unset).
static BAGGAGE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says whether the baggage propagator is on, for [`propagation_headers`].
pub fn set_baggage(on: bool) {
    BAGGAGE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether an `http(s)://` URL is https, and its authority without user information
/// (`host:port` as written).
/// Read byte by byte: on every request, and a string searcher's set-up alone cost more.
fn secure_and_authority(url: &str) -> (bool, &str) {
    let separator = url.as_bytes().windows(3).position(|w| w == b"://");
    let (scheme, rest) = match separator {
        Some(at) => (
            url.get(..at).unwrap_or_default(),
            url.get(at + 3..).unwrap_or_default(),
        ),
        None => ("http", url),
    };
    let end = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = rest.get(..end).unwrap_or_default();
    let authority = match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => authority.get(at + 1..).unwrap_or_default(),
        None => authority,
    };
    (scheme.eq_ignore_ascii_case("https"), authority)
}

/// The host and port of an `http(s)://` URL (the scheme's port when none is given),
/// read without building a `Uri` on every request.
fn host_and_port(url: &str) -> (&str, Option<u16>) {
    let (secure, authority) = secure_and_authority(url);
    let default = if secure { 443 } else { 80 };
    // `[::1]:5000`: the brackets stay out of the address, as `Uri::host` keeps them.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()),
        _ => (authority, Some(default)),
    };
    (host, port.or(Some(default)))
}

/// The `server.address` and `server.port` attributes of `url`, made once for each of
/// the few authorities the worker calls (the two services): the host's text is shared,
/// not copied for every request.
fn server_attributes(url: &str) -> Server {
    use std::cell::{Cell, RefCell};
    /// Whether the scheme is https (the default port), the host and port as written.
    type Seen = Vec<((bool, Box<str>), Server)>;
    thread_local! {
        static SEEN: RefCell<Seen> = const { RefCell::new(Vec::new()) };
        static MADE: Cell<u32> = const { Cell::new(0) };
    }
    // All that host_and_port reads; no user information (no credentials kept here).
    let (secure, host_port) = secure_and_authority(url);
    SEEN.with_borrow_mut(|seen| {
        if let Some((_, server)) = seen
            .iter()
            .find(|((s, k), _)| *s == secure && **k == *host_port)
        {
            return server.clone();
        }
        let (host, port) = host_and_port(url);
        let server = Server {
            id: MADE.replace(MADE.get().wrapping_add(1)),
            host: KeyValue::new("server.address", std::sync::Arc::<str>::from(host)),
            port: port.map(|p| KeyValue::new("server.port", i64::from(p))),
        };
        // A handful at most; a worker never calls more than a few.
        if seen.len() >= 8 {
            seen.remove(0);
        }
        seen.push(((secure, host_port.into()), server.clone()));
        server
    })
}

/// A server's attributes, and a number that tells it from the others this thread has
/// called (made anew for each one [`server_attributes`] meets).
#[derive(Clone)]
struct Server {
    id: u32,
    host: KeyValue,
    port: Option<KeyValue>,
}

/// A span made current until dropped; ended when dropped.
pub struct Scope {
    // The guard is dropped first, restoring the previous context.
    _guard: opentelemetry::ContextGuard,
    cx: opentelemetry::Context,
}

impl Scope {
    /// Starts a span (child of the current one) and makes it current.
    pub fn start(
        name: &'static str,
        kind: opentelemetry::trace::SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Scope {
        use opentelemetry::trace::{TraceContextExt, Tracer};
        let parent = opentelemetry::Context::current();
        let cx = match tracer() {
            Some(tracer) => {
                let span = tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .start_with_context(tracer, &parent);
                parent.with_span(span)
            }
            // Traces are not exported: the current span (none) stays current.
            None => parent,
        };
        Scope {
            _guard: cx.clone().attach(),
            cx,
        }
    }

    pub fn set(&self, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::TraceContextExt;
        self.cx.span().set_attributes(attributes);
    }

    /// Marks the span failed, with a description.
    pub fn fail(&self, description: String) {
        use opentelemetry::trace::{Status, TraceContextExt};
        self.cx.span().set_status(Status::error(description));
    }
}

impl Scope {
    /// The span's context, for a link from another trace.
    pub fn span_context(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::TraceContextExt;
        self.cx.span().span_context().clone()
    }
}

/// One order's span: the root of the order's own trace (linked to the cycle that took
/// the order), kept open across the order's scheduled steps and entered while each one
/// runs, so that its CLIENT spans, the `traceparent` sent to the services and its log
/// lines all belong to that trace. Ended by [`OrderSpan::end`] (or when dropped).
pub struct OrderSpan {
    /// `None` with the instrumentation off.
    cx: Option<opentelemetry::Context>,
}

impl OrderSpan {
    /// Starts the span of an order: a new trace, linked to `cycle` when it is valid,
    /// or continuing `parent` (the order's earlier span, from a previous cycle or run)
    /// when there is one. `baggage` travels to the services with its requests. Neither
    /// is built with the instrumentation off.
    pub fn start(
        attributes: impl FnOnce() -> Vec<KeyValue>,
        baggage: impl FnOnce() -> Vec<KeyValue>,
        cycle: Option<opentelemetry::trace::SpanContext>,
        parent: Option<opentelemetry::trace::SpanContext>,
    ) -> OrderSpan {
        use opentelemetry::trace::{Link, TraceContextExt, Tracer};
        if !active() {
            return OrderSpan { cx: None };
        }
        let mut root = opentelemetry::Context::new();
        if let Some(parent) = parent.filter(|p| p.is_valid()) {
            root = root.with_remote_span_context(parent);
        }
        let header = baggage_header(baggage).map(ureq::http::HeaderValue::try_from);
        // Percent-encoded text, or plain tokens: always a valid value.
        if let Some(Ok(value)) = header {
            root = root.with_value(BaggageHeader(value));
        }
        let Some(tracer) = tracer() else {
            // Traces are not exported: the order's requests still carry its baggage.
            return OrderSpan { cx: Some(root) };
        };
        let links = cycle
            .filter(|c| c.is_valid())
            .map(|c| vec![Link::with_context(c)])
            .unwrap_or_default();
        let span = tracer
            .span_builder("order")
            .with_kind(opentelemetry::trace::SpanKind::Internal)
            .with_attributes(attributes())
            .with_links(links)
            .start_with_context(tracer, &root);
        OrderSpan {
            cx: Some(root.with_span(span)),
        }
    }

    /// Whether the span records anything (the instrumentation is on): what is set on
    /// it is worth building.
    pub fn on(&self) -> bool {
        self.cx.is_some()
    }

    /// Makes the span current until the guard is dropped.
    pub fn enter(&self) -> Option<opentelemetry::ContextGuard> {
        self.cx.as_ref().map(|cx| cx.clone().attach())
    }

    /// The span's context (invalid with the instrumentation off).
    pub fn span_context(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::TraceContextExt;
        match &self.cx {
            Some(cx) => cx.span().span_context().clone(),
            None => opentelemetry::trace::SpanContext::empty_context(),
        }
    }

    pub fn set(&self, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::TraceContextExt;
        if let Some(cx) = &self.cx {
            cx.span().set_attributes(attributes);
        }
    }

    /// Marks the span failed, with a description.
    pub fn fail(&self, description: String) {
        use opentelemetry::trace::{Status, TraceContextExt};
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(description));
        }
    }

    pub fn end(self) {
        use opentelemetry::trace::TraceContextExt;
        if let Some(cx) = &self.cx {
            cx.span().end();
        }
    }
}

/// The worker's tracer: the SDK's own, used directly rather than through the global
/// provider's boxed one, which boxed each span again and dispatched each of its calls
/// dynamically. Set once by [`crate::telemetry::Telemetry::init`] when traces are
/// exported; without it, no span is made.
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer> =
    std::sync::OnceLock::new();

/// Sets the worker's tracer (the first one set stays).
pub fn set_tracer(tracer: opentelemetry_sdk::trace::SdkTracer) {
    let _ = TRACER.set(tracer);
}

fn tracer() -> Option<&'static opentelemetry_sdk::trace::SdkTracer> {
    TRACER.get()
}

/// Records an event on the current span (e.g. a simulated failure).
pub fn event(name: &'static str, attributes: Vec<KeyValue>) {
    use opentelemetry::trace::TraceContextExt;
    if !active() {
        return;
    }
    opentelemetry::Context::current()
        .span()
        .add_event(name, attributes);
}

/// The worker's instruments, from the global meter (no-op when metrics are off). The
/// per-order ones are private: they are measured through [`count_order`],
/// [`count_stock_taken`] and [`HttpAttempt`], which bind them to their attributes.
pub struct Instruments {
    http_duration: opentelemetry::metrics::Histogram<f64>,
    orders_processed: opentelemetry::metrics::Counter<u64>,
    pub cycle_duration: opentelemetry::metrics::Histogram<f64>,
    pub orders_registered: opentelemetry::metrics::Gauge<u64>,
    pub orders_pending: opentelemetry::metrics::Gauge<u64>,
    pub orders_quarantined: opentelemetry::metrics::Gauge<u64>,
    stock_taken: opentelemetry::metrics::Counter<u64>,
}

/// The instruments, made on first use (after [`crate::telemetry::Telemetry::init`] in the binary).
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: std::sync::OnceLock<Instruments> = std::sync::OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("ordermanagement");
        Instruments {
            http_duration: meter
                .f64_histogram("http.client.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP client requests.")
                .with_boundaries(vec![
                    // The semantic conventions' buckets, plus 30 s and 60 s: a Stock Service
                    // decrease may stall 30 s before it answers.
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                    30.0, 60.0,
                ])
                .build(),
            orders_processed: meter
                .u64_counter("ordermanagement.orders.processed")
                .with_unit("{order}")
                .with_description("Orders handled, by outcome.")
                .build(),
            cycle_duration: meter
                .f64_histogram("ordermanagement.cycle.duration")
                .with_unit("s")
                .with_description("Duration of one cycle.")
                .with_boundaries(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ])
                .build(),
            orders_registered: meter
                .u64_gauge("ordermanagement.orders.registered")
                .with_unit("{order}")
                .with_description("Registered orders seen by the last cycle.")
                .build(),
            orders_pending: meter
                .u64_gauge("ordermanagement.orders.pending")
                .with_unit("{order}")
                .with_description(
                    "Orders whose stock is decided but whose status update is still pending.",
                )
                .build(),
            orders_quarantined: meter
                .u64_gauge("ordermanagement.orders.quarantined")
                .with_unit("{order}")
                .with_description(
                    "Orders held back after an answer about them alone went wrong, tried again on a backoff of their own.",
                )
                .build(),
            stock_taken: meter
                .u64_counter("ordermanagement.stock.taken")
                .with_unit("{item}")
                .with_description("Stock taken by successful decreases.")
                .build(),
        }
    })
}

/// How many attribute sets each per-order instrument keeps bound; measurements with
/// any other set are recorded unbound. The worker's sets are few (a handful of
/// routes, statuses and outcomes), so this bounds memory, not the common case. A bound
/// set stays bound for the life of the process (the SDK keeps its series): the first
/// sets seen keep the slots.
const BOUND_SETS: usize = 32;

/// Instruments bound to an attribute set, each with the key of its set (the values its
/// attributes are made of, compared instead of the attributes), for one instrument.
type BoundSets<K, B> = std::cell::RefCell<Vec<(K, B)>>;

/// One measurement, through the bound instrument of the set whose key is `key`: one is
/// bound (with `bind_set`, on the attributes `attributes` makes) the first time a key
/// is met, while fewer than [`BOUND_SETS`] are; past that, or while the thread ends,
/// it is recorded unbound. Through a bound instrument a measurement skips the SDK's
/// hashing and look-up of its attributes, most of its cost (3,400 instructions a
/// duration).
fn measure<K: Copy + PartialEq, B: Clone>(
    sets: &'static std::thread::LocalKey<BoundSets<K, B>>,
    key: K,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    bind_set: impl FnOnce(&[KeyValue]) -> B,
    bound: impl FnOnce(&B),
    unbound: impl FnOnce(&[KeyValue]),
) {
    let found = sets.try_with(|sets| {
        let sets = sets.try_borrow().ok()?;
        sets.iter().find(|(k, _)| *k == key).map(|(_, b)| b.clone())
    });
    if let Some(instrument) = found.ok().flatten() {
        return bound(&instrument);
    }
    let attributes = attributes();
    let kept = sets.try_with(|sets| {
        let mut sets = sets.try_borrow_mut().ok()?;
        if sets.len() >= BOUND_SETS {
            return None;
        }
        let instrument = bind_set(&attributes);
        sets.push((key, instrument.clone()));
        Some(instrument)
    });
    match kept.ok().flatten() {
        Some(instrument) => bound(&instrument),
        None => unbound(&attributes),
    }
}

/// Adds `value` to `counter` for the set of `key`, which `attributes` makes.
fn add<K: Copy + PartialEq>(
    sets: &'static std::thread::LocalKey<BoundCounters<K>>,
    counter: &opentelemetry::metrics::Counter<u64>,
    value: u64,
    key: K,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) {
    measure(
        sets,
        key,
        attributes,
        |a| counter.bind(a),
        |b| b.add(value),
        |a| counter.add(value, a),
    );
}

/// A counter's bound sets, by their key.
type BoundCounters<K> = BoundSets<K, opentelemetry::metrics::BoundCounter<u64>>;

/// Counts one handled order (`ordermanagement.orders.processed`) with its outcome and,
/// unless empty, the kind of its reason.
pub fn count_order(outcome: &'static str, reason: &'static str) {
    thread_local! {
        static SETS: BoundCounters<(&'static str, &'static str)> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    add(
        &SETS,
        &instruments().orders_processed,
        1,
        (outcome, reason),
        || {
            let mut attributes = vec![KeyValue::new("outcome", outcome)];
            if !reason.is_empty() {
                attributes.push(KeyValue::new("reason", reason));
            }
            attributes
        },
    );
}

/// Counts stock taken by a decrease (`ordermanagement.stock.taken`) of this wood.
pub fn count_stock_taken(quantity: u64, wood_type: &'static str) {
    thread_local! {
        static SETS: BoundCounters<&'static str> = const { std::cell::RefCell::new(Vec::new()) };
    }
    add(
        &SETS,
        &instruments().stock_taken,
        quantity,
        wood_type,
        || vec![KeyValue::new("wood_type", wood_type)],
    );
}

/// Records an HTTP call's duration (`http.client.request.duration`) with the
/// attributes of `key`, which `attributes` makes when its set is not bound yet.
fn record_duration(seconds: f64, key: DurationKey, attributes: impl FnOnce() -> Vec<KeyValue>) {
    use opentelemetry::metrics::BoundHistogram;
    thread_local! {
        static SETS: BoundSets<DurationKey, BoundHistogram<f64>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let histogram = &instruments().http_duration;
    measure(
        &SETS,
        key,
        attributes,
        |a| histogram.bind(a),
        |b| b.record(seconds),
        |a| histogram.record(seconds, a),
    );
}

/// What a duration's attributes are made of, compared instead of the attributes
/// themselves: its method, route, server, status and error type (the status's when it
/// says a failure and no other is given).
#[derive(Clone, Copy, PartialEq)]
struct DurationKey {
    method: &'static str,
    template: &'static str,
    server: u32,
    status: Option<u16>,
    error: Option<&'static str>,
}

/// The attributes a call's span and its duration share: its method, server and route,
/// in a list with room for the two more each adds.
fn call_attributes(method: &'static str, template: &'static str, server: &Server) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(6);
    attributes.extend([
        KeyValue::new("http.request.method", method),
        server.host.clone(),
        KeyValue::new("url.template", template),
    ]);
    attributes.extend(server.port.clone());
    attributes
}

/// One HTTP call attempt: a CLIENT span named `{method} {url.template}` with the HTTP
/// client semantic-convention attributes, current while the call runs (so that its
/// `traceparent` goes out with the request), and a duration measurement.
pub struct HttpAttempt {
    /// `None` with the instrumentation off: nothing is built or measured.
    on: Option<AttemptSpan>,
}

struct AttemptSpan {
    scope: Scope,
    started: Instant,
    method: &'static str,
    template: &'static str,
    server: Server,
}

impl HttpAttempt {
    /// Starts the span `name` (the caller's `{method} {url.template}`, e.g.
    /// `GET /orders/status/{status}`) for one attempt at `url`; `resend` is the
    /// attempt's number (0 for the first).
    pub fn start(
        name: &'static str,
        method: &'static str,
        template: &'static str,
        url: &str,
        resend: u32,
    ) -> HttpAttempt {
        if !active() {
            return HttpAttempt { on: None };
        }
        let server = server_attributes(url);
        let mut attributes = call_attributes(method, template, &server);
        attributes.push(KeyValue::new(
            "url.full",
            crate::redact::url(url).into_owned(),
        ));
        if resend > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(resend),
            ));
        }
        let scope = Scope::start(name, opentelemetry::trace::SpanKind::Client, attributes);
        HttpAttempt {
            on: Some(AttemptSpan {
                scope,
                started: Instant::now(),
                method,
                template,
                server,
            }),
        }
    }

    /// Ends the attempt with the reply's status, or the kind of error that ended it.
    pub fn finish(self, status: Option<u16>, error: Option<&'static str>) {
        let Some(a) = self.on else {
            return;
        };
        let code = status.map(|s| KeyValue::new("http.response.status_code", i64::from(s)));
        let error_type = match (status, error) {
            (_, Some(kind)) => Some(Value::from(kind)),
            (Some(s), None) if s >= 400 => Some(Value::from(s.to_string())),
            _ => None,
        };
        let error_type = error_type.map(|kind| KeyValue::new("error.type", kind));
        if code.is_some() || error_type.is_some() {
            a.scope
                .set(code.iter().chain(&error_type).cloned().collect());
        }
        if let Some(kind) = &error_type {
            a.scope.fail(kind.value.to_string());
        }
        let key = DurationKey {
            method: a.method,
            template: a.template,
            server: a.server.id,
            status,
            error,
        };
        record_duration(a.started.elapsed().as_secs_f64(), key, || {
            let mut attributes = call_attributes(a.method, a.template, &a.server);
            attributes.extend(code);
            attributes.extend(error_type);
            attributes
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_written_as_display_writes_them() {
        let mut rng = fastrand::Rng::with_seed(29);
        let edges = [0, 1, -1, 9, 10, -10, 161, i64::MAX, i64::MIN, i64::MIN + 1];
        let random = (0..1000).map(|_| rng.i64(..) >> rng.u32(0..64));
        for n in edges.into_iter().chain(random) {
            let mut text = String::from("k=");
            super::push_decimal(&mut text, n);
            assert_eq!(text, format!("k={n}"));
        }
    }

    #[test]
    fn the_headers_written_directly_are_the_propagators_own() {
        use opentelemetry::baggage::BaggageExt;
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        use std::collections::HashMap;
        super::set_baggage(true);
        let span = |flags| {
            SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                true,
                TraceState::NONE,
            )
        };
        for (flags, baggage) in [
            (
                TraceFlags::SAMPLED,
                vec![opentelemetry::KeyValue::new(
                    "ordermanagement.order.id",
                    161i64,
                )],
            ),
            (TraceFlags::default(), vec![]),
            (
                TraceFlags::SAMPLED,
                vec![
                    opentelemetry::KeyValue::new("ordermanagement.order.id", 7i64),
                    opentelemetry::KeyValue::new("shard", "2-4"),
                ],
            ),
            (
                TraceFlags::SAMPLED,
                vec![
                    opentelemetry::KeyValue::new("a", "1"),
                    opentelemetry::KeyValue::new("a", "2"),
                ],
            ),
            (
                TraceFlags::SAMPLED,
                vec![
                    opentelemetry::KeyValue::new("a", "x y,z;é"),
                    opentelemetry::KeyValue::new("b", 2.5),
                ],
            ),
        ] {
            let cx = opentelemetry::Context::new().with_remote_span_context(span(flags));
            let mut expected = HashMap::new();
            let with_baggage = cx.with_baggage(baggage.clone());
            TraceContextPropagator::new().inject_context(&with_baggage, &mut expected);
            BaggagePropagator::new().inject_context(&with_baggage, &mut expected);
            // An empty tracestate is left out (W3C Trace Context allows either).
            expected.retain(|k, v| k != "tracestate" || !v.is_empty());
            let ours = match super::baggage_header(|| baggage) {
                Some(header) => cx.with_value(super::BaggageHeader(header.try_into().unwrap())),
                None => cx,
            };
            let got: HashMap<String, String> = super::context_headers(&ours)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            // Baggage entries in any order (the propagator's follow a hash map).
            let entries = |headers: &HashMap<String, String>| {
                let mut entries: Vec<String> = headers
                    .get("baggage")
                    .map(|b| b.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                entries.sort();
                entries
            };
            assert_eq!(entries(&got), entries(&expected));
            let (mut got, mut expected) = (got, expected);
            got.remove("baggage");
            expected.remove("baggage");
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn server_attributes_are_the_urls_own_whether_made_or_kept() {
        use opentelemetry::{KeyValue, Value};
        let urls = [
            "http://order:5000/orders/1",
            "http://order:5000/orders/2?x=1",
            "https://u:p@stock.example/stocks/decrease",
            "http://[::1]:5001/stocks/decrease",
            "http://127.0.0.1/orders/status/registered?skip=0&limit=10",
            "http://order:5001/orders/1",
            "https://order:5001/orders/1",
            "https://order/orders/1",
            "http://order/orders/1",
        ];
        // Twice: made the first time, kept the second.
        for url in urls.iter().chain(urls.iter()) {
            let (host, port) = super::host_and_port(url);
            let super::Server {
                host: h, port: p, ..
            } = super::server_attributes(url);
            assert_eq!(
                h,
                KeyValue::new("server.address", host.to_string()),
                "{url}"
            );
            assert_eq!(
                p.map(|p| p.value),
                port.map(|p| Value::I64(i64::from(p))),
                "{url}"
            );
        }
    }

    #[test]
    fn host_and_port_are_read_as_a_uri_would_give_them() {
        for url in [
            "http://order:5000/orders/1",
            "https://u:p@stock.example/stocks/decrease?x=1",
            "http://[::1]:5001/stocks/decrease",
            "http://127.0.0.1/orders/status/registered?skip=0&limit=10",
        ] {
            let uri: ureq::http::Uri = url.parse().unwrap();
            let port = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                _ => Some(80),
            });
            assert_eq!(
                super::host_and_port(url),
                (uri.host().unwrap(), port),
                "{url}"
            );
        }
    }
}
