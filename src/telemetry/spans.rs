//! The OTLP trace request, encoded straight from the SDK's [`SpanData`] into protobuf
//! bytes: the same bytes opentelemetry-otlp sends (a test holds them equal), without
//! first building opentelemetry-proto's message, which copies every name, key and
//! value into a fresh allocation and frees it again after prost has written it. That
//! copy was most of the export thread's work: of its 69,000 instructions an order, about
//! 24,400 are left, 12,200 of them encoding.
//!
//! [`TraceExporter`] plugs the encoder into the SDK's batch processor and sends the
//! bytes through opentelemetry-otlp's own HTTP exporter, which keeps doing everything
//! else as before: the endpoint, `OTEL_EXPORTER_OTLP_HEADERS`, compression, the timeout
//! and the retry. That exporter is handed an empty batch; the signal's client
//! ([`super::Client`]) sends the spans' bytes in place of the empty request it was
//! given, compressed when the request says `Content-Encoding: gzip`.
//!
//! Nothing here reads a peer's bytes: the input is the worker's own spans.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_http::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// `body` compressed as opentelemetry-otlp compresses with `gzip`.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body)?;
    encoder.finish()
}

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// The most a trace request may weigh, as opentelemetry-otlp's own limit: a larger one is
/// dropped, not sent.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The encoded request waiting to be sent, shared by the exporter (which puts it there)
/// and the signal's client (which sends it, as often as the exporter retries).
pub type PendingBody = Arc<Mutex<Pending>>;

/// One export's encoded spans, while the exporter sends them.
#[derive(Debug, Default)]
pub struct Pending {
    body: Option<Bytes>,
    /// `body` gzipped, made on the first attempt that asks for it.
    gzipped: Option<Bytes>,
    /// Attempts that took it.
    sent: u32,
}

impl Pending {
    /// The body to send in place of the one a request of these `headers` holds: the
    /// encoded spans, gzipped when the request says `Content-Encoding: gzip`. `None`
    /// when none is waiting. An error when the request is not one the encoded bytes
    /// can stand for (another content type or encoding).
    pub fn body_for(&mut self, headers: &ureq::http::HeaderMap) -> Result<Option<Bytes>, String> {
        let Some(body) = &self.body else {
            return Ok(None);
        };
        let protobuf = headers
            .get(ureq::http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes() == b"application/x-protobuf");
        if !protobuf {
            return Err("the trace request is not protobuf: its spans were not sent".into());
        }
        let body = match headers.get(ureq::http::header::CONTENT_ENCODING) {
            None => body.clone(),
            Some(e) if super::is_gzip(e) => match &self.gzipped {
                Some(gzipped) => gzipped.clone(),
                None => {
                    let gzipped = Bytes::from(gzip(body).map_err(|e| e.to_string())?);
                    self.gzipped = Some(gzipped.clone());
                    gzipped
                }
            },
            Some(_) => {
                return Err(
                    "the trace request's encoding is not gzip: its spans were not sent".into(),
                );
            }
        };
        self.sent += 1;
        Ok(Some(body))
    }
}

/// The trace exporter: encodes each batch, then lets opentelemetry-otlp's exporter send
/// it (see the module's docs).
#[derive(Debug)]
pub struct TraceExporter {
    inner: opentelemetry_otlp::SpanExporter,
    pending: PendingBody,
    resource: EncodedResource,
}

impl TraceExporter {
    /// `inner` must send through a client that holds `pending`.
    pub fn new(inner: opentelemetry_otlp::SpanExporter, pending: PendingBody) -> TraceExporter {
        TraceExporter {
            inner,
            pending,
            resource: EncodedResource::default(),
        }
    }
}

impl SpanExporter for TraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let failure = |what: &str| Err(OTelSdkError::InternalFailure(what.to_string()));
        let body = request(&batch, &self.resource);
        // The spans are freed before the network wait.
        drop(batch);
        if body.len() > MAX_BODY {
            return failure(&format!(
                "a trace request of {} bytes is over the limit of {MAX_BODY}: its spans were dropped",
                body.len()
            ));
        }
        match self.pending.lock() {
            // The SDK never runs two exports at once; if it ever did, batches must not mix.
            Ok(pending) if pending.body.is_some() => return failure("an export is in flight"),
            Ok(mut pending) => {
                *pending = Pending {
                    body: Some(Bytes::from(body)),
                    ..Pending::default()
                }
            }
            Err(_) => return failure("a lock was poisoned"),
        }
        let result = self.inner.export(Vec::new()).await;
        let sent = self
            .pending
            .lock()
            .map(|mut pending| std::mem::take(&mut *pending).sent);
        match (result, sent) {
            // Delivered, but not by the client that holds the spans: they were not sent.
            (Ok(()), Ok(0)) => failure("the exporter sent no request: the spans were not sent"),
            (result, _) => result,
        }
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
        self.inner.set_resource(resource);
    }
}

/// A resource's two fields of `ResourceSpans`, encoded once: the `resource` message and
/// the `schema_url`.
#[derive(Debug)]
pub struct EncodedResource {
    resource: Vec<u8>,
    schema_url: Vec<u8>,
}

impl Default for EncodedResource {
    /// An empty resource's, until the SDK gives the provider's.
    fn default() -> EncodedResource {
        EncodedResource::new(&Resource::builder_empty().build())
    }
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> EncodedResource {
        let mut encoded = Vec::new();
        message(&mut encoded, 1, |buf| {
            for (key, value) in resource.iter() {
                key_value(buf, 1, key.as_str(), value);
            }
        });
        let mut schema_url = Vec::new();
        string(
            &mut schema_url,
            3,
            resource.schema_url().unwrap_or_default(),
        );
        EncodedResource {
            resource: encoded,
            schema_url,
        }
    }
}

/// The `ExportTraceServiceRequest` of `spans`: one `ResourceSpans`, with one
/// `ScopeSpans` per instrumentation scope in the order the scopes first appear, each
/// with its spans in the batch's order.
pub fn request(spans: &[SpanData], resource: &EncodedResource) -> Vec<u8> {
    // A span takes about 300 bytes.
    let mut buf = Vec::with_capacity(256 + spans.len() * 320);
    // Each span's scope, as an index into `scopes`: compared once a span.
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    let mut scope_of = Vec::with_capacity(spans.len());
    for span in spans {
        let scope = &span.instrumentation_scope;
        let index = match scopes.iter().position(|s| *s == scope) {
            Some(index) => index,
            None => {
                scopes.push(scope);
                scopes.len() - 1
            }
        };
        scope_of.push(index);
    }
    sized_message(&mut buf, 1, 3, |buf| {
        buf.extend_from_slice(&resource.resource);
        for (index, scope) in scopes.into_iter().enumerate() {
            sized_message(buf, 2, 3, |buf| {
                message(buf, 1, |buf| {
                    string(buf, 1, scope.name());
                    string(buf, 2, scope.version().unwrap_or_default());
                    for kv in scope.attributes() {
                        key_value(buf, 3, kv.key.as_str(), &kv.value);
                    }
                });
                let in_scope = spans.iter().zip(&scope_of).filter(|(_, s)| **s == index);
                for (span, _) in in_scope {
                    sized_message(buf, 2, 2, |buf| encode_span(buf, span));
                }
                string(buf, 3, scope.schema_url().unwrap_or_default());
            });
        }
        buf.extend_from_slice(&resource.schema_url);
    });
    buf
}

/// One `Span`, its fields in tag order as prost writes them.
fn encode_span(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(buf, 1, &context.trace_id().to_bytes());
    bytes(buf, 2, &context.span_id().to_bytes());
    string(buf, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(buf, 4, &span.parent_span_id.to_bytes());
    }
    string(buf, 5, &span.name);
    uint(buf, 6, kind(&span.span_kind));
    fixed64(buf, 7, nanos(span.start_time));
    fixed64(buf, 8, nanos(span.end_time));
    for kv in &span.attributes {
        key_value(buf, 9, kv.key.as_str(), &kv.value);
    }
    uint(buf, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(buf, 11, |buf| {
            fixed64(buf, 1, nanos(event.timestamp));
            string(buf, 2, &event.name);
            for kv in &event.attributes {
                key_value(buf, 3, kv.key.as_str(), &kv.value);
            }
            uint(buf, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint(buf, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        message(buf, 13, |buf| {
            let context = &link.span_context;
            bytes(buf, 1, &context.trace_id().to_bytes());
            bytes(buf, 2, &context.span_id().to_bytes());
            string(buf, 3, &context.trace_state().header());
            for kv in &link.attributes {
                key_value(buf, 4, kv.key.as_str(), &kv.value);
            }
            uint(buf, 5, u64::from(link.dropped_attributes_count));
            fixed32(buf, 6, flags(link.span_context.is_remote(), context));
        });
    }
    uint(buf, 14, u64::from(span.links.dropped_count));
    message(buf, 15, |buf| {
        let (code, description) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(buf, 2, description);
        uint(buf, 3, code);
    });
    fixed32(buf, 16, flags(span.parent_span_is_remote, context));
}

/// OTLP's span flags: the W3C trace flags, and whether the parent (or, for a link, the
/// linked span) is remote, with the bit saying that this is known.
fn flags(remote: bool, context: &SpanContext) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    let mut flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if remote {
        flags |= IS_REMOTE;
    }
    flags
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Nanoseconds since the Unix epoch; 0 before it, as opentelemetry-proto has it.
fn nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A `KeyValue` as field `field` of its message. A scalar value's lengths are counted
/// first, and the bytes around its key and value written in two runs; an array's
/// lengths are found by [`message`].
fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let Some((value_head, text)) = scalar(value) else {
        return message(buf, field, |buf| {
            string(buf, 1, key);
            message(buf, 2, |buf| any_value(buf, value));
        });
    };
    let value_len = value_head.bytes().len() + text.len();
    // The key is left out when empty, as proto3 has it.
    let key_len = if key.is_empty() {
        0
    } else {
        1 + varint_len(key.len() as u64) + key.len()
    };
    let len = key_len + 1 + varint_len(value_len as u64) + value_len;
    let mut head = Head::default();
    head.tag(field, LEN);
    head.varint(len as u64);
    if !key.is_empty() {
        head.tag(1, LEN);
        head.varint(key.len() as u64);
    }
    buf.extend_from_slice(head.bytes());
    buf.extend_from_slice(key.as_bytes());
    let mut head = Head::default();
    head.tag(2, LEN);
    head.varint(value_len as u64);
    head.extend(value_head.bytes());
    buf.extend_from_slice(head.bytes());
    buf.extend_from_slice(text.as_bytes());
}

/// An `AnyValue` holding a scalar, as the bytes before its text (its tag, and the
/// value or the text's length) and its text (empty but for a string); `None` for an
/// array, or a kind this worker does not know, which [`any_value`] leaves empty.
#[inline(always)]
fn scalar(value: &Value) -> Option<(Head, &str)> {
    let mut head = Head::default();
    let text = match value {
        Value::String(s) => {
            head.tag(1, LEN);
            head.varint(s.as_str().len() as u64);
            s.as_str()
        }
        Value::Bool(b) => {
            head.tag(2, VARINT);
            head.varint(u64::from(*b));
            ""
        }
        Value::I64(i) => {
            head.tag(3, VARINT);
            head.varint(*i as u64);
            ""
        }
        Value::F64(f) => {
            head.tag(4, FIXED64);
            head.extend(&f.to_le_bytes());
            ""
        }
        _ => return None,
    };
    Some((head, text))
}

/// A few tags, lengths and fixed-size values (at most 22 bytes: a key's two tags and
/// lengths, or a value's tag and length with a scalar's 11), written on the stack and
/// then added to the message at once.
#[derive(Default)]
struct Head {
    bytes: [u8; 32],
    len: usize,
}

impl Head {
    #[inline(always)]
    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    #[inline(always)]
    fn varint(&mut self, mut value: u64) {
        loop {
            let byte = if value < 0x80 {
                value as u8
            } else {
                value as u8 | 0x80
            };
            if let Some(place) = self.bytes.get_mut(self.len) {
                *place = byte;
                self.len += 1;
            }
            value >>= 7;
            if value == 0 {
                break;
            }
        }
    }

    #[inline(always)]
    fn extend(&mut self, bytes: &[u8]) {
        if let Some(place) = self.bytes.get_mut(self.len..self.len + bytes.len()) {
            place.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// How many bytes `value` takes as a varint.
fn varint_len(value: impl Into<u64>) -> usize {
    let value: u64 = value.into();
    let bits = u64::BITS - (value | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// The fields of an `AnyValue` (a oneof: written even when its value is the default).
/// A kind of value this worker does not know (the type is non-exhaustive) is left
/// empty rather than guessed.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    if let Some((head, text)) = scalar(value) {
        buf.extend_from_slice(head.bytes());
        return buf.extend_from_slice(text.as_bytes());
    }
    if let Value::Array(array) = value {
        message(buf, 5, |buf| match array {
            Array::Bool(values) => each(buf, values.iter().map(|v| Value::Bool(*v))),
            Array::I64(values) => each(buf, values.iter().map(|v| Value::I64(*v))),
            Array::F64(values) => each(buf, values.iter().map(|v| Value::F64(*v))),
            Array::String(values) => {
                for value in values {
                    message(buf, 1, |buf| string_value(buf, value.as_str()));
                }
            }
            _ => {}
        });
    }
}

/// An `AnyValue`'s `string_value` (written even when empty).
fn string_value(buf: &mut Vec<u8>, text: &str) {
    tag(buf, 1, LEN);
    length_delimited(buf, text.as_bytes());
}

/// The `values` of an `ArrayValue`.
fn each(buf: &mut Vec<u8>, values: impl Iterator<Item = Value>) {
    for value in values {
        message(buf, 1, |buf| any_value(buf, &value));
    }
}

/// A nested message as field `field`: its length is known once `write` has written it,
/// so one byte is kept for the length, and the message moved when it needs more.
fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    sized_message(buf, field, 1, write);
}

/// [`message`], keeping `room` bytes for the length: a span's (2) or a full batch's (3)
/// needs more than one, and a message whose length takes `room` bytes stays where it
/// was written (a smaller one is moved back, a larger one on).
fn sized_message(buf: &mut Vec<u8>, field: u32, room: usize, write: impl FnOnce(&mut Vec<u8>)) {
    tag(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + room, 0);
    write(buf);
    let mut head = Head::default();
    head.varint((buf.len() - at - room) as u64);
    let prefix = head.bytes();
    let n = prefix.len();
    // Moved on (or back) when the length takes more (or fewer) bytes than were kept.
    if n != room {
        let end = buf.len();
        if n > room {
            buf.resize(end + n - room, 0);
        }
        buf.copy_within(at + room..end, at + n);
        buf.truncate(end + n - room);
    }
    if let Some(place) = buf.get_mut(at..at + n) {
        place.copy_from_slice(prefix);
    }
}

fn tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

fn varint(buf: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        return buf.push(value as u8);
    }
    let mut head = Head::default();
    head.varint(value);
    buf.extend_from_slice(head.bytes());
}

fn length_delimited(buf: &mut Vec<u8>, bytes: &[u8]) {
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A proto3 `string` field: left out when empty.
fn string(buf: &mut Vec<u8>, field: u32, value: &str) {
    bytes(buf, field, value.as_bytes());
}

/// A proto3 `bytes` field: left out when empty.
fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        tag(buf, field, LEN);
        length_delimited(buf, value);
    }
}

/// A proto3 varint field (`uint32`, an enum): left out when 0.
fn uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(buf, field, VARINT);
        varint(buf, value);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(buf, field, FIXED64);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        tag(buf, field, FIXED32);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;

    /// What opentelemetry-otlp sends for `spans`: opentelemetry-proto's conversion,
    /// encoded by prost.
    fn reference(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans.to_vec(), &resource.into()),
        }
        .encode_to_vec()
    }

    fn ours(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
        super::request(spans, &super::EncodedResource::new(resource))
    }

    fn context(rng: &mut fastrand::Rng, remote: bool) -> SpanContext {
        let state = match rng.u8(0..3) {
            0 => TraceState::NONE,
            _ => {
                TraceState::from_key_value([("vendor", "x1"), ("other", "y-2")]).unwrap_or_default()
            }
        };
        let flags = match rng.bool() {
            true => TraceFlags::SAMPLED,
            false => TraceFlags::default(),
        };
        SpanContext::new(
            TraceId::from(rng.u128(..)),
            SpanId::from(rng.u64(..)),
            flags,
            remote,
            state,
        )
    }

    fn text(rng: &mut fastrand::Rng) -> String {
        // Empty, short, one that needs a two-byte length, and one that needs three.
        let len = [0, 1, 7, 130, 20_000][rng.usize(0..5).min(rng.usize(0..5))];
        (0..len).map(|_| rng.alphanumeric()).collect::<String>()
            + ["", "é", "\u{202e}"][rng.usize(0..3)]
    }

    fn value(rng: &mut fastrand::Rng) -> Value {
        match rng.u8(0..9) {
            0 => Value::Bool(rng.bool()),
            1 => Value::I64(rng.i64(..)),
            2 => Value::I64(rng.i64(-5..5)),
            3 => Value::F64(rng.f64() * 1e6 - 5e5),
            4 => Value::String(text(rng).into()),
            5 => Value::Array(Array::Bool(vec![rng.bool(), false, true])),
            6 => Value::Array(Array::I64(
                (0..rng.usize(0..4)).map(|_| rng.i64(..)).collect(),
            )),
            7 => Value::Array(Array::F64(vec![0.0, -1.5, rng.f64()])),
            _ => Value::Array(Array::String(
                (0..rng.usize(0..3))
                    .map(|_| StringValue::from(text(rng)))
                    .collect(),
            )),
        }
    }

    fn attributes(rng: &mut fastrand::Rng) -> Vec<KeyValue> {
        (0..rng.usize(0..8))
            .map(|_| KeyValue::new(text(rng), value(rng)))
            .collect()
    }

    fn time(rng: &mut fastrand::Rng) -> SystemTime {
        match rng.u8(0..8) {
            // Before the epoch: 0, as opentelemetry-proto has it.
            0 => UNIX_EPOCH - Duration::from_secs(5),
            1 => UNIX_EPOCH,
            _ => UNIX_EPOCH + Duration::from_nanos(rng.u64(..1 << 62)),
        }
    }

    fn span(rng: &mut fastrand::Rng, scopes: &[InstrumentationScope]) -> SpanData {
        let mut events = SpanEvents::default();
        events.events = (0..rng.usize(0..3))
            .map(|_| {
                let mut event = Event::new(
                    Cow::Owned(text(rng)),
                    time(rng),
                    attributes(rng),
                    rng.u32(0..3),
                );
                event.dropped_attributes_count = rng.u32(0..3);
                event
            })
            .collect();
        events.dropped_count = rng.u32(0..2);
        let mut links = SpanLinks::default();
        links.links = (0..rng.usize(0..3))
            .map(|_| {
                let remote = rng.bool();
                Link::new(context(rng, remote), attributes(rng), rng.u32(0..3))
            })
            .collect();
        links.dropped_count = rng.u32(0..2);
        let status = match rng.u8(0..4) {
            0 => Status::Unset,
            1 => Status::Ok,
            2 => Status::error(""),
            _ => Status::error(text(rng)),
        };
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        SpanData {
            span_context: context(rng, false),
            parent_span_id: match rng.bool() {
                true => SpanId::INVALID,
                false => SpanId::from(rng.u64(1..)),
            },
            parent_span_is_remote: rng.bool(),
            span_kind: kinds[rng.usize(0..kinds.len())].clone(),
            name: match rng.bool() {
                true => Cow::Borrowed("order"),
                false => Cow::Owned(text(rng)),
            },
            start_time: time(rng),
            end_time: time(rng),
            attributes: attributes(rng),
            dropped_attributes_count: rng.u32(0..3),
            events,
            links,
            status,
            instrumentation_scope: scopes[rng.usize(0..scopes.len())].clone(),
        }
    }

    #[test]
    fn the_request_is_byte_for_byte_the_one_opentelemetry_otlp_sends() {
        let scopes = [
            InstrumentationScope::builder("ordermanagement").build(),
            InstrumentationScope::builder("other")
                .with_version("1.2.3")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .with_attributes([KeyValue::new("a", 1), KeyValue::new("b", "x")])
                .build(),
            InstrumentationScope::builder("").build(),
        ];
        let resources = [
            Resource::builder_empty().build(),
            Resource::builder()
                .with_service_name("ordermanagement")
                .with_attributes([
                    KeyValue::new("service.version", "0.1.0"),
                    KeyValue::new("ordermanagement.shard", "2/4"),
                ])
                .build(),
            Resource::builder_empty()
                .with_schema_url([KeyValue::new("k", true)], "https://example.com/schema")
                .build(),
        ];
        let mut rng = fastrand::Rng::with_seed(29);
        for round in 0..300 {
            let spans: Vec<SpanData> = (0..rng.usize(0..12))
                .map(|_| span(&mut rng, &scopes[..1 + round % scopes.len()]))
                .collect();
            let resource = &resources[round % resources.len()];
            assert_eq!(
                ours(&spans, resource),
                reference(&spans, resource),
                "round {round}"
            );
        }
    }

    /// `n` random spans of the worker's one scope, seeded with `seed`, and its resource.
    fn workers_spans(seed: u64, n: usize) -> (Vec<SpanData>, Resource) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let scope = [InstrumentationScope::builder("ordermanagement").build()];
        let spans = (0..n).map(|_| span(&mut rng, &scope)).collect();
        let resource = Resource::builder()
            .with_service_name("ordermanagement")
            .build();
        (spans, resource)
    }

    #[test]
    fn a_full_batch_of_the_workers_spans_is_the_same_too() {
        // 512 spans (the batch size) of the order path's shape: far over the
        // lengths that fit one byte, at every level.
        let (spans, resource) = workers_spans(7, 512);
        let body = ours(&spans, &resource);
        assert!(body.len() > 1 << 16, "{}", body.len());
        assert_eq!(body, reference(&spans, &resource));
    }

    #[test]
    fn a_batch_whose_length_takes_four_bytes_is_the_same_too() {
        // One attribute of 3 MiB: the span's length and the batch's need four bytes,
        // more than the room kept for either.
        let (mut spans, resource) = workers_spans(11, 2);
        if let Some(span) = spans.first_mut() {
            span.attributes
                .push(KeyValue::new("big", "x".repeat(3 << 20)));
        }
        let body = ours(&spans, &resource);
        assert!(body.len() > 3 << 20, "{}", body.len());
        assert_eq!(body, reference(&spans, &resource));
    }

    /// A collector behind the OTLP exporter: it sends what the traces' client would (the
    /// pending spans in place of the empty request, when it holds them) and answers
    /// `answers` in turn, then 200.
    #[derive(Debug, Default)]
    struct Stub {
        pending: Option<super::PendingBody>,
        answers: std::sync::Mutex<Vec<u16>>,
        sent: std::sync::Mutex<Vec<(ureq::http::HeaderMap, opentelemetry_http::Bytes)>>,
    }

    impl Stub {
        fn send(
            &self,
            request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
        ) -> Result<
            opentelemetry_http::Response<opentelemetry_http::Bytes>,
            opentelemetry_http::HttpError,
        > {
            let (parts, mut body) = request.into_parts();
            if let Some(pending) = &self.pending
                && let Some(spans) = pending.lock().unwrap().body_for(&parts.headers)?
            {
                body = spans;
            }
            self.sent.lock().unwrap().push((parts.headers, body));
            let status = self.answers.lock().unwrap().pop().unwrap_or(200);
            Ok(opentelemetry_http::Response::builder()
                .status(status)
                .body(opentelemetry_http::Bytes::new())
                .unwrap())
        }
    }

    /// The stub, shared with the test that reads what it sent.
    #[derive(Debug)]
    struct StubClient(std::sync::Arc<Stub>);

    impl opentelemetry_http::HttpClient for StubClient {
        fn send_bytes<'a, 'b>(
            &'a self,
            request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<
                            opentelemetry_http::Response<opentelemetry_http::Bytes>,
                            opentelemetry_http::HttpError,
                        >,
                    > + Send
                    + 'b,
            >,
        >
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async move { self.0.send(request) })
        }
    }

    /// The trace exporter over `stub`, the resource set as the SDK sets it.
    fn exporter(
        stub: &std::sync::Arc<Stub>,
        gzip: bool,
        pending: super::PendingBody,
        resource: &Resource,
    ) -> super::TraceExporter {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        use opentelemetry_sdk::trace::SpanExporter;
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(StubClient(stub.clone()))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint("http://127.0.0.1:9/v1/traces")
            .with_retry_policy(super::super::export_retries());
        if gzip {
            builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
        }
        let mut exporter = super::TraceExporter::new(builder.build().unwrap(), pending);
        exporter.set_resource(resource);
        exporter
    }

    /// Polls an export to its end (the stub answers at once; the retry's wait is a
    /// thread sleep).
    fn export(
        exporter: &super::TraceExporter,
        spans: Vec<SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        use opentelemetry_sdk::trace::SpanExporter;
        let mut future = std::pin::pin!(exporter.export(spans));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..1000 {
            if let std::task::Poll::Ready(result) = future.as_mut().poll(&mut cx) {
                return result;
            }
        }
        panic!("the export never ended");
    }

    #[test]
    fn an_export_sends_the_encoded_spans_gzipped_once_and_again_on_a_retry() {
        use std::io::Read;
        let (spans, resource) = workers_spans(3, 20);
        let expected = ours(&spans, &resource);
        for gzip in [false, true] {
            let pending = super::PendingBody::default();
            let stub = std::sync::Arc::new(Stub {
                pending: Some(pending.clone()),
                // Refused once (retried by the exporter), then taken.
                answers: std::sync::Mutex::new(vec![503]),
                ..Stub::default()
            });
            let exporter = exporter(&stub, gzip, pending.clone(), &resource);
            export(&exporter, spans.clone()).unwrap();
            let sent = stub.sent.lock().unwrap();
            assert_eq!(sent.len(), 2, "gzip {gzip}: refused, then sent again");
            assert_eq!(
                sent[0].1, sent[1].1,
                "gzip {gzip}: the same bytes both times"
            );
            let body = match gzip {
                true => {
                    assert_eq!(sent[0].0["content-encoding"], "gzip");
                    let mut read = Vec::new();
                    flate2::read::GzDecoder::new(&sent[0].1[..])
                        .read_to_end(&mut read)
                        .unwrap();
                    read
                }
                false => sent[0].1.to_vec(),
            };
            assert!(body == expected, "gzip {gzip}: {} bytes sent", body.len());
            assert!(
                pending.lock().unwrap().body.is_none(),
                "nothing left waiting"
            );
        }
    }

    #[test]
    fn an_export_whose_spans_no_request_took_is_a_failure() {
        let (spans, resource) = workers_spans(4, 1);
        // A client that does not hold the exporter's pending spans: the exporter's
        // request goes out empty, and the export must not count as delivered.
        let stub = std::sync::Arc::new(Stub::default());
        let exporter = exporter(&stub, false, super::PendingBody::default(), &resource);
        let result = export(&exporter, spans);
        assert!(result.is_err(), "{result:?}");
        assert_eq!(stub.sent.lock().unwrap().len(), 1);
    }

    #[test]
    fn spans_stand_only_for_a_protobuf_request_in_gzip_or_plain() {
        use ureq::http::HeaderMap;
        let mut pending = super::Pending {
            body: Some(opentelemetry_http::Bytes::from_static(b"spans")),
            ..super::Pending::default()
        };
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().unwrap());
            }
            map
        };
        let protobuf = ("content-type", "application/x-protobuf");
        for refused in [
            headers(&[]),
            headers(&[("content-type", "application/json")]),
            headers(&[protobuf, ("content-encoding", "zstd")]),
        ] {
            assert!(pending.body_for(&refused).is_err(), "{refused:?}");
        }
        assert_eq!(pending.sent, 0);
        let plain = pending.body_for(&headers(&[protobuf])).unwrap().unwrap();
        assert_eq!(&plain[..], b"spans");
        let gzipped = pending.body_for(&headers(&[protobuf, ("content-encoding", "GZIP")]));
        assert_ne!(&gzipped.unwrap().unwrap()[..], b"spans");
        assert_eq!(pending.sent, 2);
        assert!(
            super::Pending::default()
                .body_for(&headers(&[]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn gzip_is_what_a_gzip_reader_reads_back() {
        use std::io::Read;
        let body = b"spans ".repeat(1000);
        let packed = super::gzip(&body).unwrap();
        assert!(packed.len() < body.len() / 10);
        let mut read = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, body);
    }
}
