//! OTLP/gRPC without an async runtime: the OTLP exporter's HTTP client, swapped for one
//! that sends each http/protobuf request it is given as a gRPC unary call with
//! [`grpc_unary`], on the SDK's export thread.
//!
//! The exporter builds the same protobuf message as for OTLP/HTTP and hands it over
//! with its headers (`OTEL_EXPORTER_OTLP_HEADERS` and the per-signal ones, and the
//! user agent); this client sends it to the signal's `Export` method with those headers
//! as metadata, and turns the `grpc-status` back into an HTTP status the exporter's
//! retry policy understands, as the OTLP specification sorts them: OK is 200 with the
//! reply's message; the retryable codes (CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS) are 503, and RESOURCE_EXHAUSTED is 429 when
//! the server sends a RetryInfo (both with its delay as `retry-after`, in whole seconds
//! rounded up); every other code is 400, dropped. RST_STREAM is mapped as gRPC maps it
//! (REFUSED_STREAM to UNAVAILABLE, and so on); an HTTP status other than 200 (a
//! proxy's) is kept when the exporter retries it (429, 502, 503, 504), 400 otherwise.
//! The exporter's retry policy (one retry after about 100 ms, or after the server's
//! delay; all within the export timeout) does the retrying, but for the final flush at
//! exit: there, a call refused for the misbehaviour's backoff, or closed for a new
//! misbehaviour, is answered 400 (dropped), since its retry would only meet the
//! backoff. With gzip
//! (`OTEL_EXPORTER_OTLP_COMPRESSION`), the exporter compresses the message and the call
//! says `grpc-encoding: gzip`.
//!
//! A failure is logged on stderr now and then, never with a header value: what the
//! server says (grpc-message, and any other text in a note) is scrubbed of every value
//! of the request's metadata ([`grpc_unary::Secrets`]). Everything, from the name
//! lookup to the last byte of the reply, runs against one deadline: the signal's
//! export timeout. Connection reuse, the wait after a server's misbehaviour and TLS
//! (with `OTEL_EXPORTER_OTLP_CERTIFICATE`, or the per-signal variable, as the roots)
//! are the crate's.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grpc_unary::{Call, Client, Error, Reply, Secrets, TlsConfig, code_name};
use opentelemetry_http::{Bytes, HttpError, Request, Response};
use ureq::http::{HeaderValue, StatusCode};

pub use grpc_unary::Target;

use super::{ErrorLog, Signal};

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
    timeout: Duration,
    client: Client,
    errors: ErrorLog,
    /// Set when the telemetry shuts down: the final flush, which must not wait.
    stopping: Arc<AtomicBool>,
}

impl GrpcClient {
    /// The client of `signal`; for https://, the server's certificate is checked
    /// against the PEM file `certificate` if given, the bundled roots otherwise.
    pub fn new(
        signal: Signal,
        target: Target,
        certificate: Option<&str>,
        timeout: Duration,
        stopping: Arc<AtomicBool>,
    ) -> Result<GrpcClient, String> {
        let tls = match target.tls {
            true => {
                Some(TlsConfig::new(certificate.map(Path::new)).map_err(|e| format!("OTLP {e}"))?)
            }
            false => None,
        };
        Ok(GrpcClient {
            signal,
            timeout,
            client: Client::new(target, tls)?,
            errors: ErrorLog::new(signal),
            stopping,
        })
    }

    pub fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        // The exporter compresses the body when OTEL_EXPORTER_OTLP_COMPRESSION asks.
        let gzip = parts
            .headers
            .get("content-encoding")
            .is_some_and(super::is_gzip);
        let mut metadata: Vec<(&str, &[u8])> = Vec::new();
        let mut secrets = Secrets::with_redaction(crate::redact::credentials);
        for (name, value) in &parts.headers {
            if !grpc_unary::reserved(name.as_str()) {
                metadata.push((name.as_str(), value.as_bytes()));
                secrets.add(value.as_bytes());
            }
        }
        let call = Call {
            path: method(self.signal),
            metadata: &metadata,
            message: &body,
            encoding: gzip.then_some("gzip"),
            timeout: self.timeout,
            secrets: &secrets,
        };
        let authority = self.client.authority();
        match self.client.call(&call) {
            Ok(reply) => Ok(self.reply(reply)),
            Err(Error::Reset(code)) => Ok(self.reset(code)),
            Err(Error::Http(status)) => {
                // Not a gRPC server's answer (a proxy's). 429, 502, 503 and 504 are
                // retried by the exporter, as gRPC maps them to UNAVAILABLE; any other
                // status is dropped (gRPC's UNKNOWN), a 2xx other than 200 included: it
                // is no success of the call.
                self.errors.note(&format!(
                    "{authority} answered HTTP {status} to a gRPC call"
                ));
                Ok(http(
                    match status {
                        429 | 502 | 503 | 504 => status,
                        _ => 400,
                    },
                    Vec::new(),
                ))
            }
            Err(Error::NoStatus) => {
                self.errors
                    .note(&format!("{authority} answered without grpc-status"));
                Ok(http(500, Vec::new()))
            }
            Err(e) => {
                let what = format!("{authority}: {}", secrets.scrub(&e.to_string()));
                self.errors.note(&what);
                // The final flush does not retry a call the misbehaviour's backoff
                // refuses, or will (a new misbehaviour starts one of 1 s at least):
                // the exporter's retry, within RETRY_WAIT, would only meet it.
                let refused = match e {
                    Error::BackingOff(left) => left > super::RETRY_WAIT,
                    e => e.misbehaved(),
                };
                if refused && self.stopping.load(Ordering::Relaxed) {
                    return Ok(http(400, Vec::new()));
                }
                Err(what.into())
            }
        }
    }

    /// The exporter's view of a gRPC reply.
    fn reply(&self, reply: Reply) -> Response<Bytes> {
        let Reply {
            code,
            message,
            retry_delay,
            body,
        } = reply;
        if code == 0 {
            // The reply's message (partial success), read only for the exporter's log.
            return http(200, body);
        }
        let status = match (code, retry_delay) {
            (1 | 4 | 10 | 11 | 14 | 15, _) => 503,
            (8, Some(_)) => 429,
            _ => 400,
        };
        self.errors.note(&format!(
            "{} answered {} ({code}){}{}",
            self.client.authority(),
            code_name(code),
            if message.is_empty() { "" } else { ": " },
            message
        ));
        let response = http(status, Vec::new());
        match retry_delay.filter(|_| status != 400) {
            Some(delay) => retry_after(response, delay),
            None => response,
        }
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
            self.client.authority(),
            code_name(grpc)
        ));
        http(status, Vec::new())
    }
}

/// `response` with `delay` as its `retry-after`, in whole seconds rounded up.
fn retry_after(mut response: Response<Bytes>, delay: Duration) -> Response<Bytes> {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    response
}

/// A reply to the exporter: a status of ours, one of those it knows.
fn http(status: u16, body: Vec<u8>) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> GrpcClient {
        let target = Target::parse("http://127.0.0.1:9").unwrap();
        GrpcClient::new(
            Signal::Traces,
            target,
            None,
            Duration::from_secs(1),
            Arc::default(),
        )
        .unwrap()
    }

    fn reply(code: u32, retry_delay: Option<Duration>, body: &[u8]) -> Reply {
        Reply {
            code,
            message: String::new(),
            retry_delay,
            body: body.to_vec(),
        }
    }

    #[test]
    fn any_reply_maps_to_a_status_the_exporter_knows() {
        let client = client();
        let status = |r: Reply| client.reply(r).status().as_u16();
        assert_eq!(status(reply(14, None, b"")), 503);
        assert_eq!(status(reply(1, None, b"")), 503);
        assert_eq!(status(reply(3, None, b"")), 400);
        assert_eq!(status(reply(8, None, b"")), 400);
        assert_eq!(status(reply(99, None, b"")), 400);
        // RESOURCE_EXHAUSTED with a RetryInfo: 429, its delay in whole seconds.
        let delay = Some(Duration::from_millis(1500));
        let throttled = client.reply(reply(8, delay, b""));
        assert_eq!(throttled.status().as_u16(), 429);
        assert_eq!(throttled.headers()["retry-after"], "2");
        assert_eq!(
            client.reply(reply(14, delay, b"")).headers()["retry-after"],
            "2"
        );
        assert!(
            !client
                .reply(reply(3, delay, b""))
                .headers()
                .contains_key("retry-after")
        );
        // OK: the message as the crate read it.
        let ok = client.reply(reply(0, None, b"hi"));
        assert_eq!((ok.status().as_u16(), &ok.body()[..]), (200, &b"hi"[..]));
        // RST_STREAM.
        let reset = |code: u32| client.reset(code).status().as_u16();
        assert_eq!(
            [reset(7), reset(8), reset(0xb), reset(2)],
            [503, 503, 400, 400]
        );
    }

    fn request() -> Request<Bytes> {
        Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:9/v1/traces")
            .header("authorization", "Bearer s3cret-token")
            .body(Bytes::from_static(b"batch"))
            .unwrap()
    }

    #[test]
    fn transport_failures_are_errors_with_the_server_named() {
        // Nothing listens on port 9: refused, at once.
        let e = client().send(request()).unwrap_err().to_string();
        assert!(e.starts_with("127.0.0.1:9: "), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_final_flush_does_not_retry_what_the_backoff_refuses() {
        use std::io::{Read, Write};
        // A collector that floods PING frames on each of two connections.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let flood = std::thread::spawn(move || {
            let frame = |kind: u8, payload: &[u8]| {
                let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
                f.extend([kind, 0, 0, 0, 0, 0]);
                f.extend_from_slice(payload);
                f
            };
            let pings = frame(6, &[0; 8]).repeat(64);
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                conn.set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let _ = conn.read(&mut [0; 65536]);
                let _ = conn.write_all(&frame(4, &[]));
                while conn.write_all(&pings).is_ok() {}
            }
        });
        let client = |stopping: bool| {
            let timeout = Duration::from_secs(5);
            let stopping = Arc::new(AtomicBool::new(stopping));
            GrpcClient::new(Signal::Traces, target.clone(), None, timeout, stopping).unwrap()
        };
        // While the worker runs: the flood, then the wait before the next connection,
        // are transport errors, which the exporter retries.
        let running = client(false);
        let flooded = running.send(request()).unwrap_err().to_string();
        assert!(flooded.contains("ENHANCE_YOUR_CALM"), "{flooded}");
        let waiting = running.send(request()).unwrap_err().to_string();
        assert!(waiting.contains("not connecting again"), "{waiting}");
        // In the final flush: statuses it drops at once.
        let stopping = client(true);
        assert_eq!(stopping.send(request()).unwrap().status(), 400);
        assert_eq!(stopping.send(request()).unwrap().status(), 400);
        flood.join().unwrap();
    }
}
