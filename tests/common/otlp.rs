//! What the OTLP/HTTP receiver of a test got, decoded with the official protobuf
//! definitions.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use standin::OtlpSink;

/// A value as text: strings as they are, integers and booleans written out, anything
/// else in its debug form; empty when there is none.
pub fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Attributes by key, their values as [`text`].
pub fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// A span's attribute as [`text`]; none when it is absent or has no value.
pub fn attr(span: &Span, key: &str) -> Option<String> {
    let kv = span.attributes.iter().find(|kv| kv.key == key)?;
    kv.value.as_ref().and_then(|v| v.value.as_ref())?;
    Some(text(&kv.value))
}

/// Lower-case hex, as trace and span ids are written in a `traceparent`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every resource's attributes, and every span, of the traces the receiver got.
pub fn resources_and_spans(sink: &OtlpSink) -> (Vec<HashMap<String, String>>, Vec<Span>) {
    let (mut resources, mut spans) = (Vec::new(), Vec::new());
    for body in sink.bodies("/v1/traces") {
        let request =
            ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP traces decode");
        for rs in request.resource_spans {
            resources.push(attrs(&rs.resource.unwrap_or_default().attributes));
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    (resources, spans)
}

/// Every span the receiver got.
pub fn spans(sink: &OtlpSink) -> Vec<Span> {
    resources_and_spans(sink).1
}

/// Asserts that the services got one `traceparent` per request (`what` says which),
/// each naming an exported CLIENT span of the trace it carries.
pub fn assert_traceparents_name_client_spans(traceparents: &[String], spans: &[Span], what: &str) {
    let client: HashMap<String, &Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .map(|s| (hex(&s.span_id), s))
        .collect();
    assert_eq!(
        traceparents.len(),
        client.len(),
        "one traceparent per {what}"
    );
    for tp in traceparents {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        let span = client
            .get(parts[2])
            .unwrap_or_else(|| panic!("{tp} names an exported client span"));
        assert_eq!(parts[1], hex(&span.trace_id), "{tp}");
    }
}
