//! Everything OpenTelemetry SDK: settings from the standard environment variables, an
//! OTLP/HTTP client built on the worker's own ureq and an OTLP/gRPC one on the small
//! HTTP/2 client of the crate [`grpc_unary`] ([`grpc`]; no async runtime either way),
//! one provider per signal with the SDK's batch processors and periodic reader on their
//! own threads, the OTLP logs bridge handed to [`crate::logging`], and a guard that
//! flushes and shuts them down on every exit path. Only [`crate::startup`] uses these
//! items. The trace request's bytes are encoded here ([`spans`]), straight from the
//! SDK's spans; opentelemetry-otlp's exporter sends them.
//!
//! The worker, its steps and the HTTP transport use only the `opentelemetry` API,
//! through [`instrument`]; with export off, those calls go to no-op providers.
//!
//! It may import, from the root, [`crate::logging`] (where the logs export is installed)
//! and [`crate::redact`]; nothing of the cycle, the services or the state. The cycle and
//! the services import [`instrument`]; only start-up imports the rest.

pub mod grpc;
pub mod instrument;
pub mod spans;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::services::resolve::Resolver;

pub use crate::logging::EXPORT_LOG_TARGET;
/// How long shutdown asks each signal's processor to wait for its last export.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(900);
/// The most the exit waits for telemetry, all signals together.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(2000);
/// Export errors are logged at most this often (per signal).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// The three signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// Its place in the per-signal arrays (traces, metrics, logs).
    fn index(self) -> usize {
        match self {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }
}

/// How a signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/HTTP with protobuf bodies; the exporter reads the endpoint itself.
    Http,
    /// OTLP/gRPC to this endpoint, used as it is; for https://, the server's certificate
    /// is checked against this PEM file when OTEL_EXPORTER_OTLP_(signal_)CERTIFICATE
    /// names one, against the bundled roots otherwise.
    Grpc {
        endpoint: String,
        certificate: Option<String>,
    },
}

/// What to export, decided from the environment at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub traces: bool,
    pub metrics: bool,
    pub logs: bool,
    /// The transport of each signal (traces, metrics, logs): gRPC when its protocol
    /// variable says `grpc`, or none is set and its endpoint's port is 4317.
    pub transports: [Transport; 3],
    /// The collector's endpoint of each signal that is on (traces, metrics, logs), as
    /// its variable gives it: named when the last telemetry cannot be delivered.
    pub endpoints: [Option<String>; 3],
    /// Lines to log once telemetry is set up (why something is off, how to turn it on).
    pub notes: Vec<(log::Level, String)>,
    /// OTEL_EXPORTER_OTLP_TIMEOUT, for the HTTP client.
    pub export_timeout: Duration,
    /// OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_TIMEOUT, where set (traces, metrics,
    /// logs): they win over the shared one, for the request as for the exporter.
    pub signal_timeouts: [Option<Duration>; 3],
    /// OTEL_PROPAGATORS asks for baggage as well as tracecontext (its default,
    /// `tracecontext,baggage`, does).
    pub baggage: bool,
    /// service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES gives one.
    pub default_service_name: bool,
    /// service.version (the crate's) unless OTEL_RESOURCE_ATTRIBUTES gives one.
    pub default_service_version: bool,
    /// Batch and queue sizes out of bounds, with the values to put in their place in
    /// the process environment before [`Telemetry::init`] (the SDK reads them from there
    /// when it builds its batch processors); see [`MAX_QUEUE_SIZE`].
    pub clamped: Vec<(&'static str, String)>,
}

/// Largest `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE` used (4 x the default):
/// the SDK allocates each queue whole at start (a span takes 352 bytes before its
/// attributes), and a full one holds every record until the collector answers.
pub const MAX_QUEUE_SIZE: u64 = 8_192;
/// Largest `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` / `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE` used (4 x
/// the default): one export request holds a whole batch. Both kinds of size are at least 1
/// (at 0 the SDK drops every record or exports empty batches).
pub const MAX_EXPORT_BATCH_SIZE: u64 = 2_048;

/// The batch processors' sizes that are out of bounds, each with its bounded value, and
/// the one warning line that says so.
fn clamp_batch_sizes(
    get: impl Fn(&str) -> Option<String>,
) -> (Vec<(&'static str, String)>, Option<String>) {
    let mut clamped = Vec::new();
    let mut said = Vec::new();
    for (name, max) in [
        ("OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUE_SIZE),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", MAX_EXPORT_BATCH_SIZE),
        ("OTEL_BLRP_MAX_QUEUE_SIZE", MAX_QUEUE_SIZE),
        ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", MAX_EXPORT_BATCH_SIZE),
    ] {
        // A value that is not a number is ignored by the SDK too (its default applies).
        let Some(n) = get(name).and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let bounded = n.clamp(1, max);
        if bounded != n {
            clamped.push((name, bounded.to_string()));
            said.push(format!("{name}={n} taken as {bounded}"));
        }
    }
    let line = (!said.is_empty()).then(|| {
        format!(
            "{}: queue sizes are kept within 1..={MAX_QUEUE_SIZE} and batch sizes within \
             1..={MAX_EXPORT_BATCH_SIZE} (the SDK allocates its queues at start)",
            said.join(", ")
        )
    });
    (clamped, line)
}

/// Shortest `OTEL_BSP_SCHEDULE_DELAY` / `OTEL_BLRP_SCHEDULE_DELAY` used, in ms: at 0 the
/// batch processor's thread wakes without pause and spends a whole core.
pub const MIN_SCHEDULE_DELAY_MS: u64 = 100;
/// Shortest `OTEL_METRIC_EXPORT_INTERVAL` used, in ms: at 0 the periodic reader
/// collects and exports without pause (more than a core's third, measured).
pub const MIN_METRIC_EXPORT_INTERVAL_MS: u64 = 1_000;

/// The delays and intervals below their floor, of the signals that are on, each with
/// its floor, and the one warning line that says so.
fn floor_intervals(
    get: impl Fn(&str) -> Option<String>,
    on: [bool; 3],
) -> (Vec<(&'static str, String)>, Option<String>) {
    let mut raised = Vec::new();
    let mut said = Vec::new();
    for (name, floor, signal_on) in [
        ("OTEL_BSP_SCHEDULE_DELAY", MIN_SCHEDULE_DELAY_MS, on[0]),
        (
            "OTEL_METRIC_EXPORT_INTERVAL",
            MIN_METRIC_EXPORT_INTERVAL_MS,
            on[1],
        ),
        ("OTEL_BLRP_SCHEDULE_DELAY", MIN_SCHEDULE_DELAY_MS, on[2]),
    ] {
        // A value that is not a number is ignored by the SDK too (its default applies).
        let Some(ms) = get(name).and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if signal_on && ms < floor {
            raised.push((name, floor.to_string()));
            said.push(format!("{name}={ms} taken as {floor}"));
        }
    }
    let line = (!said.is_empty()).then(|| {
        format!(
            "{}: the batch processors' delays are at least {MIN_SCHEDULE_DELAY_MS} ms and the \
             metric export interval at least {MIN_METRIC_EXPORT_INTERVAL_MS} ms (below that \
             their threads spin)",
            said.join(", ")
        )
    });
    (raised, line)
}

/// The longest export timeout taken from `OTEL_EXPORTER_OTLP_TIMEOUT` and its
/// per-signal forms.
pub const MAX_EXPORT_TIMEOUT_MS: u64 = 30_000;

impl Settings {
    /// Reads the standard variables through `var` (the process environment in main).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Settings {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut notes = Vec::new();
        // An export timeout above the ceiling is taken as the ceiling, said once: a
        // collector that stays silent is reported within a minute.
        let mut over = Vec::new();
        let mut millis = |name: &str| {
            let ms = get(name).and_then(|v| v.parse::<u64>().ok())?;
            if ms > MAX_EXPORT_TIMEOUT_MS {
                over.push(format!("{name}={ms} taken as {MAX_EXPORT_TIMEOUT_MS}"));
            }
            Some(Duration::from_millis(ms.min(MAX_EXPORT_TIMEOUT_MS)))
        };
        let export_timeout =
            millis("OTEL_EXPORTER_OTLP_TIMEOUT").unwrap_or(Duration::from_secs(10));
        let signal_timeouts = Signal::ALL
            .map(|signal| millis(&format!("OTEL_EXPORTER_OTLP_{}_TIMEOUT", signal.upper())));
        if !over.is_empty() {
            notes.push((
                log::Level::Warn,
                format!(
                    "{}: an export waits at most {} s, so that a silent collector is reported \
                     within a minute",
                    over.join(", "),
                    MAX_EXPORT_TIMEOUT_MS / 1000
                ),
            ));
        }
        let baggage = get("OTEL_PROPAGATORS")
            .filter(|p| !p.trim().is_empty())
            .is_none_or(|p| p.split(',').any(|p| p.trim() == "baggage"));
        let resource = get("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        let has = |key: &str| resource.split(',').any(|kv| kv.trim().starts_with(key));
        let default_service_name = get("OTEL_SERVICE_NAME").is_none() && !has("service.name=");
        let default_service_version = !has("service.version=");
        let off = |notes| Settings {
            traces: false,
            metrics: false,
            logs: false,
            transports: [Transport::Http, Transport::Http, Transport::Http],
            endpoints: [None, None, None],
            notes,
            export_timeout,
            signal_timeouts,
            baggage,
            default_service_name,
            default_service_version,
            clamped: Vec::new(),
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return off(vec![(
                log::Level::Info,
                "telemetry off: OTEL_SDK_DISABLED=true".into(),
            )]);
        }
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let mut on = [false; 3];
        let mut transports = [Transport::Http, Transport::Http, Transport::Http];
        let mut endpoints = [None, None, None];
        for (i, signal) in Signal::ALL.into_iter().enumerate() {
            let exporter =
                get(&format!("OTEL_{}_EXPORTER", signal.upper())).unwrap_or_else(|| "otlp".into());
            let endpoint = get(&format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.upper()))
                .or_else(|| base.clone());
            match exporter.to_ascii_lowercase().as_str() {
                "none" => continue,
                "otlp" => {}
                other => {
                    notes.push((
                        log::Level::Warn,
                        format!(
                            "OTEL_{}_EXPORTER={other} is not supported (otlp or none): {} off",
                            signal.upper(),
                            signal.name()
                        ),
                    ));
                    continue;
                }
            }
            let Some(endpoint) = endpoint else { continue };
            let protocol_var = format!("OTEL_EXPORTER_OTLP_{}_PROTOCOL", signal.upper());
            let protocol = get(&protocol_var).or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
            let grpc = match protocol.as_deref() {
                Some("grpc") => true,
                Some("http/protobuf") => false,
                // No protocol: the collector's gRPC port means gRPC, as the demo's other
                // services (whose SDKs default to grpc) send it there.
                None => port_of(&endpoint) == Some(4317),
                Some(other) => {
                    let line = format!(
                        "OTLP protocol {other} is not supported (grpc or http/protobuf): \
                         http/protobuf is used"
                    );
                    notes.push((log::Level::Warn, line));
                    false
                }
            };
            if grpc {
                if let Err(e) = grpc::Target::parse(&endpoint) {
                    notes.push((
                        log::Level::Warn,
                        format!("{} export off: OTLP/gRPC endpoint {e}", signal.name()),
                    ));
                    continue;
                }
                let certificate = get(&format!(
                    "OTEL_EXPORTER_OTLP_{}_CERTIFICATE",
                    signal.upper()
                ))
                .or_else(|| get("OTEL_EXPORTER_OTLP_CERTIFICATE"));
                transports[i] = Transport::Grpc {
                    endpoint: endpoint.clone(),
                    certificate,
                };
            }
            endpoints[i] = Some(endpoint);
            on[i] = true;
        }
        notes.dedup();
        if !on.iter().any(|o| *o) && notes.is_empty() && base.is_some() {
            notes.push((
                log::Level::Info,
                "telemetry export off: every OTEL_*_EXPORTER is none".into(),
            ));
        }
        if !on.iter().any(|o| *o) && notes.is_empty() {
            notes.push((
                log::Level::Info,
                "telemetry export off: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4317 for \
                 OTLP/gRPC, http://localhost:4318 for OTLP/HTTP) to send traces, metrics and logs"
                    .into(),
            ));
        }
        // Only the batch processors of traces and logs read these sizes.
        let (mut clamped, line) = if on[0] || on[2] {
            clamp_batch_sizes(get)
        } else {
            (Vec::new(), None)
        };
        if let Some(line) = line {
            notes.push((log::Level::Warn, line));
        }
        let (raised, line) = floor_intervals(get, on);
        clamped.extend(raised);
        if let Some(line) = line {
            notes.push((log::Level::Warn, line));
        }
        Settings {
            traces: on[0],
            metrics: on[1],
            logs: on[2],
            transports,
            endpoints,
            clamped,
            ..off(notes)
        }
    }

    pub fn any(&self) -> bool {
        self.traces || self.metrics || self.logs
    }

    /// The time one export request of `signal` may take.
    pub fn timeout(&self, signal: Signal) -> Duration {
        let i = Signal::ALL.iter().position(|s| *s == signal).unwrap_or(0);
        self.signal_timeouts[i].unwrap_or(self.export_timeout)
    }
}

fn port_of(endpoint: &str) -> Option<u16> {
    let uri: ureq::http::Uri = endpoint.parse().ok()?;
    uri.port_u16()
}

/// The last export failure of each signal (traces, metrics, logs) and when it came,
/// whichever client saw it, until an export of that signal succeeds again: the reason
/// given when the last telemetry cannot be delivered at exit.
static LAST_FAILURE: Mutex<[Option<(Instant, String)>; 3]> = Mutex::new([None, None, None]);

/// Export failures of one signal, logged on stderr now and then.
#[derive(Debug)]
struct ErrorLog {
    signal: Signal,
    errors: Mutex<(Option<Instant>, u64)>,
}

impl ErrorLog {
    fn new(signal: Signal) -> ErrorLog {
        ErrorLog {
            signal,
            errors: Mutex::new((None, 0)),
        }
    }

    /// Logs an export failure on stderr only (its target is kept out of OTLP), at most
    /// once a minute per signal; the others are counted. Nothing is promised about a
    /// later line: `once` may exit right after this one.
    fn note(&self, what: &str) {
        if let Ok(mut last) = LAST_FAILURE.lock() {
            last[self.signal.index()] = Some((Instant::now(), what.to_string()));
        }
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.1 += 1;
        if errors
            .0
            .is_none_or(|last| last.elapsed() >= ERROR_LOG_EVERY)
        {
            log::warn!(
                target: EXPORT_LOG_TARGET,
                "{} export failed ({} so far): {what}; the worker goes on, and further \
                 failures within a minute are only counted",
                self.signal.name(),
                errors.1
            );
            errors.0 = Some(Instant::now());
        }
    }
}

/// The OTLP/HTTP client: the worker's ureq, with a short connect timeout so that a
/// collector that is down costs milliseconds, and export errors logged now and then.
/// The collector's name is resolved as the services' are ([`Resolver`]): kept for a
/// while and forgotten when an export fails, not looked up on a new thread for every
/// export as ureq's own resolver does.
#[derive(Debug)]
struct UreqClient {
    agent: ureq::Agent,
    resolver: Resolver,
    errors: ErrorLog,
}

impl UreqClient {
    fn new(signal: Signal, timeout: Duration) -> UreqClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_millis(500)))
            .timeout_global(Some(timeout))
            .max_redirects(0)
            // A collector's reply is small: a 16 KiB buffer (not ureq's 128 KiB, which
            // it zero-fills as it sizes it) holds its head, and its body is read through it.
            .input_buffer_size(16 * 1024)
            .max_response_header_size(16 * 1024)
            .build();
        let resolver = Resolver::new();
        let connector = ureq::unversioned::transport::DefaultConnector::new();
        UreqClient {
            agent: ureq::Agent::with_parts(config, connector, resolver.clone()),
            resolver,
            errors: ErrorLog::new(signal),
        }
    }

    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        // Sent from where it is: a batch's body is not copied again.
        let request = Request::from_parts(parts, body.as_ref());
        let result = self.agent.run(request).and_then(|mut r| {
            let status = r.status();
            let bytes = r
                .body_mut()
                .with_config()
                .limit(4 * 1024 * 1024)
                .read_to_vec()?;
            let mut response = Response::new(Bytes::from(bytes));
            *response.status_mut() = status;
            Ok(response)
        });
        match &result {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => self
                .errors
                .note(&format!("collector answered {}", r.status())),
            // An https:// endpoint on a plain port: said as the services' calls say it.
            Err(e) => {
                // The collector may have moved: the next export looks its name up again.
                if let Some(host) = uri.host() {
                    self.resolver.forget(host);
                }
                let text = e.to_string();
                self.errors
                    .note(&crate::redact::not_tls(&text).unwrap_or(text));
            }
        }
        result.map_err(Into::into)
    }
}

/// The client the OTLP exporter sends one signal's requests with: ureq for OTLP/HTTP,
/// or the gRPC client, which sends them as gRPC calls.
#[derive(Debug)]
struct Client {
    signal: Signal,
    transport: ClientTransport,
    /// The traces' client: the spans' bytes [`spans::TraceExporter`] encoded, sent in
    /// place of the (empty) request opentelemetry-otlp's exporter builds.
    pending: Option<spans::PendingBody>,
}

#[derive(Debug)]
enum ClientTransport {
    Http(UreqClient),
    Grpc(grpc::GrpcClient),
}

impl Client {
    fn new(
        signal: Signal,
        settings: &Settings,
        stopping: &Arc<AtomicBool>,
    ) -> Result<Client, String> {
        let i = Signal::ALL.iter().position(|s| *s == signal).unwrap_or(0);
        let timeout = settings.timeout(signal);
        let transport = match &settings.transports[i] {
            Transport::Http => ClientTransport::Http(UreqClient::new(signal, timeout)),
            Transport::Grpc {
                endpoint,
                certificate,
            } => {
                let target = grpc::Target::parse(endpoint)?;
                let client = grpc::GrpcClient::new(
                    signal,
                    target,
                    certificate.as_deref(),
                    timeout,
                    stopping.clone(),
                );
                ClientTransport::Grpc(client?)
            }
        };
        Ok(Client {
            signal,
            transport,
            pending: None,
        })
    }

    /// This client, sending the bytes `pending` holds in place of each request's body.
    fn sending(self, pending: spans::PendingBody) -> Client {
        Client {
            pending: Some(pending),
            ..self
        }
    }

    fn send(&self, mut request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        if let Some(pending) = &self.pending {
            let mut pending = pending.lock().map_err(|_| "a lock was poisoned")?;
            // Compressed as the exporter compressed the body it built, if it did.
            if let Some(body) = pending.body_for(request.headers())? {
                *request.body_mut() = body;
            }
        }
        let result = match &self.transport {
            ClientTransport::Http(client) => client.send(request),
            ClientTransport::Grpc(client) => client.send(request),
        };
        // Delivered (a retry after a failure, say): nothing of this signal is left
        // undelivered for now. Failures are noted by each client, with their reason.
        if let Ok(reply) = &result
            && reply.status().is_success()
            && let Ok(mut last) = LAST_FAILURE.lock()
        {
            last[self.signal.index()] = None;
        }
        result
    }
}

impl HttpClient for Client {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        // Called from the SDK's own export threads, which block on this future.
        Box::pin(async move { self.send(request) })
    }
}

/// The providers that are on; shut down when dropped or by [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    logger: Option<SdkLoggerProvider>,
    /// Each signal's collector endpoint, for the line said when the last telemetry
    /// cannot be delivered.
    endpoints: [Option<String>; 3],
    /// Set as the shutdown begins, for the clients: the final flush does not wait.
    stopping: Arc<AtomicBool>,
}

impl Telemetry {
    /// Starts the signals `settings` turn on, sets them as the global providers, says
    /// whether the baggage header goes out, and hands the logs to the log tee. Problems
    /// are logged, never fatal.
    pub fn init(settings: &Settings, extra: Vec<KeyValue>) -> Telemetry {
        for (level, note) in &settings.notes {
            log::log!(*level, "{note}");
        }
        let mut telemetry = Telemetry::default();
        telemetry.endpoints = settings.endpoints.clone();
        if !settings.any() {
            return telemetry;
        }
        instrument::activate();
        // The environment's OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES come first; the
        // worker's name and version fill in what they leave out.
        let mut resource = Resource::builder();
        if settings.default_service_name {
            resource = resource.with_service_name("ordermanagement");
        }
        if settings.default_service_version {
            resource = resource
                .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))]);
        }
        let resource = resource.with_attributes(extra).build();
        let stopping = telemetry.stopping.clone();
        let client = |signal| Client::new(signal, settings, &stopping);
        let build = |e: opentelemetry_otlp::ExporterBuildError| e.to_string();
        if settings.traces {
            let pending = spans::PendingBody::default();
            match client(Signal::Traces).and_then(|client| {
                http_export(
                    opentelemetry_otlp::SpanExporter::builder().with_http(),
                    client.sending(pending.clone()),
                )
                .build()
                .map_err(build)
            }) {
                Ok(exporter) => {
                    let provider = SdkTracerProvider::builder()
                        .with_batch_exporter(spans::TraceExporter::new(exporter, pending))
                        .with_resource(resource.clone())
                        .build();
                    opentelemetry::global::set_tracer_provider(provider.clone());
                    {
                        use opentelemetry::trace::TracerProvider;
                        instrument::set_tracer(provider.tracer("ordermanagement"));
                    }
                    telemetry.tracer = Some(provider);
                }
                Err(e) => log::warn!("traces off: {e}"),
            }
        }
        if settings.metrics {
            match client(Signal::Metrics).and_then(|client| {
                http_export(
                    opentelemetry_otlp::MetricExporter::builder().with_http(),
                    client,
                )
                .build()
                .map_err(build)
            }) {
                Ok(exporter) => {
                    let provider = SdkMeterProvider::builder()
                        .with_periodic_exporter(exporter)
                        .with_resource(resource.clone())
                        .build();
                    // Made the global one once every signal is built, below.
                    telemetry.meter = Some(provider);
                }
                Err(e) => log::warn!("metrics off: {e}"),
            }
        }
        if settings.logs {
            match client(Signal::Logs).and_then(|client| {
                http_export(
                    opentelemetry_otlp::LogExporter::builder().with_http(),
                    client,
                )
                .build()
                .map_err(build)
            }) {
                Ok(exporter) => {
                    let provider = SdkLoggerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource)
                        .build();
                    crate::logging::install_export(Box::new(
                        opentelemetry_appender_log::OpenTelemetryLogBridge::new(&provider),
                    ));
                    telemetry.logger = Some(provider);
                }
                Err(e) => log::warn!("logs off: {e}"),
            }
        }
        // The meter provider goes global last: the SDK's batch processors, built above,
        // take the global meter for metrics about themselves (otel.sdk.*, with the
        // bound instruments' feature), and are to find the no-op one, so that only
        // the worker's own metrics are exported, as the dashboard expects.
        if let Some(provider) = &telemetry.meter {
            opentelemetry::global::set_meter_provider(provider.clone());
        }
        // The trace headers are written by the instrumentation itself (no global
        // propagator is read): only whether `baggage` goes with them is to be said.
        instrument::set_baggage(settings.baggage);
        let on: Vec<&str> = [
            (telemetry.tracer.is_some(), "traces"),
            (telemetry.meter.is_some(), "metrics"),
            (telemetry.logger.is_some(), "logs"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let grpc: Vec<&str> = Signal::ALL
            .iter()
            .zip(&settings.transports)
            .filter(|(_, t)| matches!(t, Transport::Grpc { .. }))
            .map(|(s, _)| s.name())
            .filter(|name| on.contains(name))
            .collect();
        let http: Vec<&str> = on.iter().filter(|n| !grpc.contains(n)).copied().collect();
        let over = [(http, "OTLP/HTTP"), (grpc, "OTLP/gRPC")]
            .into_iter()
            .filter(|(names, _)| !names.is_empty())
            .map(|(names, how)| format!("{} over {how}", names.join(", ")))
            .collect::<Vec<_>>();
        log::info!("telemetry: exporting {}", over.join("; "));
        telemetry
    }

    /// Flushes and stops every signal; errors are logged on stderr only. Bounded: at
    /// most about two seconds, whatever the collector does.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// The three shutdowns run side by side, each on its own thread, against one
    /// deadline: a collector that is slow or never answers cannot hold the exit longer
    /// (the meter provider ignores its own timeout, and an export in flight keeps its
    /// thread until its HTTP timeout). Whatever is not done by then is abandoned.
    fn stop(&mut self) {
        use std::sync::mpsc;
        self.stopping.store(true, Ordering::Relaxed);
        let (done, results) = mpsc::channel::<(Signal, opentelemetry_sdk::error::OTelSdkResult)>();
        let began = Instant::now();
        let mut started = Vec::new();
        let mut spawn = |signal: Signal,
                         shutdown: Box<
            dyn FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send,
        >| {
            let done = done.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("otel-shutdown-{}", signal.name()))
                .spawn(move || {
                    let _ = done.send((signal, shutdown()));
                });
            if spawned.is_ok() {
                started.push(signal);
            }
        };
        if let Some(p) = self.tracer.take() {
            spawn(
                Signal::Traces,
                Box::new(move || p.shutdown_with_timeout(SHUTDOWN_WAIT)),
            );
        }
        if let Some(p) = self.logger.take() {
            crate::logging::remove_export();
            spawn(
                Signal::Logs,
                Box::new(move || p.shutdown_with_timeout(SHUTDOWN_WAIT)),
            );
        }
        if let Some(p) = self.meter.take() {
            spawn(
                Signal::Metrics,
                Box::new(move || p.shutdown_with_timeout(SHUTDOWN_WAIT)),
            );
        }
        let deadline = began + SHUTDOWN_DEADLINE;
        let mut failed: Vec<(Signal, Undelivered)> = Vec::new();
        let mut pending = started;
        while !pending.is_empty() {
            match results.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((signal, result)) => {
                    pending.retain(|s| *s != signal);
                    if let Err(e) = result {
                        failed.push((signal, Undelivered::Failed(e)));
                    }
                }
                Err(_) => {
                    failed.extend(pending.drain(..).map(|s| (s, Undelivered::Abandoned)));
                }
            }
        }
        // The export errors noted while shutting down say why; older ones may be stale.
        let reasons = LAST_FAILURE
            .lock()
            .map(|last| {
                last.clone()
                    .map(|f| f.filter(|(at, _)| *at >= began).map(|(_, what)| what))
            })
            .unwrap_or_default();
        // A batch processor's shutdown succeeds even when its last export failed: that
        // failure, noted by the client and not followed by a delivery, is what says it.
        for signal in Signal::ALL {
            if reasons[signal.index()].is_some() && !failed.iter().any(|(s, _)| *s == signal) {
                failed.push((signal, Undelivered::Noted));
            }
        }
        if failed.is_empty() {
            return;
        }
        failed.sort_by_key(|(signal, _)| signal.index());
        let failed: Vec<(Signal, Option<String>)> = failed
            .into_iter()
            .map(|(signal, how)| {
                let why = match (&reasons[signal.index()], how) {
                    (Some(what), _) => Some(what.clone()),
                    (None, Undelivered::Abandoned) => Some(format!(
                        "no answer within {} s",
                        SHUTDOWN_DEADLINE.as_secs_f64()
                    )),
                    (None, Undelivered::Failed(OTelSdkError::Timeout(after))) => {
                        Some(format!("no answer within {} s", after.as_secs_f64()))
                    }
                    (None, Undelivered::Failed(_) | Undelivered::Noted) => None,
                };
                (signal, why)
            })
            .collect();
        log::warn!(
            target: EXPORT_LOG_TARGET,
            "{}",
            undelivered_line(&failed, &self.endpoints)
        );
    }
}

use opentelemetry_sdk::error::OTelSdkError;

/// How a signal's shutdown ended without delivering its last telemetry.
enum Undelivered {
    /// Its shutdown returned an error (its last export failed, or timed out).
    Failed(OTelSdkError),
    /// Still running at the deadline: left behind.
    Abandoned,
    /// Its shutdown succeeded, but its last export failed.
    Noted,
}

/// The one line said at exit when the last telemetry of some signals (each with the
/// reason, when known) could not be delivered: `the last telemetry (metrics, traces)
/// could not be delivered to the collector at http://c:4318: connection refused`. The
/// endpoint is shown as a setting's URL is (credentials, query and fragment hidden);
/// signals sent to different endpoints are named apart.
fn undelivered_line(
    failed: &[(Signal, Option<String>)],
    endpoints: &[Option<String>; 3],
) -> String {
    let mut groups: Vec<(String, Vec<&'static str>, Vec<&str>)> = Vec::new();
    for (signal, why) in failed {
        let at = endpoints[signal.index()].as_deref().map_or_else(
            || "the collector".to_string(),
            |e| format!("the collector at {}", crate::redact::setting_url(e)),
        );
        let i = match groups.iter().position(|(g, ..)| *g == at) {
            Some(i) => i,
            None => {
                groups.push((at, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[i].1.push(signal.name());
        if let Some(why) = why
            && !groups[i].2.contains(&why.as_str())
        {
            groups[i].2.push(why);
        }
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(at, signals, why)| {
            let why = match why.is_empty() {
                true => String::new(),
                false => format!(": {}", why.join("; ")),
            };
            format!(
                "the last telemetry ({}) could not be delivered to {at}{why}",
                signals.join(", ")
            )
        })
        .collect();
    parts.join("; ")
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a `Content-Encoding` or `grpc-encoding` value says gzip.
fn is_gzip(encoding: &ureq::http::HeaderValue) -> bool {
    encoding.as_bytes().eq_ignore_ascii_case(b"gzip")
}

/// The same OTLP/HTTP settings for every signal's exporter.
fn http_export<B: WithHttpConfig + WithExportConfig>(builder: B, client: Client) -> B {
    builder
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_retry_policy(export_retries())
}

/// The longest wait before the exporters' retry (its jitter included: the policy's
/// maximum delay caps it).
const RETRY_WAIT: Duration = Duration::from_millis(100);

/// One quick retry: a collector that is down must cost milliseconds, not the
/// exporters' default backoff, at every export and at shutdown.
fn export_retries() -> opentelemetry_otlp::RetryPolicy {
    opentelemetry_otlp::RetryPolicy::default()
        .with_max_retries(1)
        .with_initial_delay(RETRY_WAIT)
        .with_max_delay(RETRY_WAIT)
        .with_max_jitter(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_env(|k| vars.get(k).cloned())
    }

    #[test]
    fn without_an_endpoint_export_is_off_with_one_line_saying_how() {
        let s = settings(&[]);
        assert!(!s.any());
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].1.contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert!(s.default_service_name);
    }

    #[test]
    fn an_endpoint_turns_every_signal_on_unless_told_otherwise() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert!(s.traces && s.metrics && s.logs);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert!(s.traces && !s.metrics && s.logs);
        let s = settings(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )]);
        assert!(s.traces && !s.metrics && !s.logs);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(!s.any());
    }

    #[test]
    fn grpc_when_the_protocol_says_so_or_none_is_set_and_the_port_is_4317() {
        let grpc = |endpoint: &str| Transport::Grpc {
            endpoint: endpoint.to_string(),
            certificate: None,
        };
        // The demo's block: no protocol, port 4317.
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317")]);
        assert!(s.traces && s.metrics && s.logs);
        assert_eq!(
            s.transports,
            [0; 3].map(|_| grpc("http://otel-collector:4317"))
        );
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        // An explicit protocol wins over the port, both ways.
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(s.transports, [0; 3].map(|_| Transport::Http));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example:443"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        if cfg!(feature = "tls") {
            assert_eq!(s.transports, [0; 3].map(|_| grpc("https://c.example:443")));
        } else {
            assert!(!s.any() && !s.notes.is_empty(), "{s:?}");
            assert!(s.notes.iter().all(|n| n.1.contains("tls")), "{s:?}");
        }
        // Per signal: its own protocol and endpoint, the endpoint used as it is.
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:9000/x"),
        ]);
        assert_eq!(
            s.transports,
            [Transport::Http, Transport::Http, grpc("http://c:9000/x")]
        );
        // The certificate for TLS: the signal's own, or the shared one.
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics-ca.pem"),
        ]);
        let certificates = s.transports.clone().map(|t| match t {
            Transport::Grpc { certificate, .. } => certificate,
            Transport::Http => None,
        });
        assert_eq!(
            certificates,
            [Some("/ca.pem"), Some("/metrics-ca.pem"), Some("/ca.pem")]
                .map(|c| c.map(String::from))
        );
        // Anything else is http/protobuf, said once.
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]);
        assert!(s.traces && s.transports == [0; 3].map(|_| Transport::Http));
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(s.notes[0].1.contains("http/json"));
    }

    #[test]
    fn the_demo_settings_are_read() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_PROPAGATORS", "tracecontext,baggage"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.namespace=keeper,service.name=om",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        assert!(s.baggage && !s.default_service_name);
        assert_eq!(s.export_timeout, Duration::from_millis(2500));
        assert_eq!(s.timeout(Signal::Traces), Duration::from_millis(2500));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "700"),
        ]);
        assert_eq!(s.timeout(Signal::Logs), Duration::from_millis(700));
        assert_eq!(s.timeout(Signal::Metrics), Duration::from_millis(2500));
        let propagators = |p: &str| {
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_PROPAGATORS", p),
            ])
            .baggage
        };
        assert!(propagators("")); // the specification's default: tracecontext,baggage
        assert!(propagators("baggage, tracecontext"));
        assert!(!propagators("tracecontext"));
    }

    #[test]
    fn export_timeouts_above_the_ceiling_are_lowered_with_one_warning() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "600000"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "18446744073709551615"),
        ]);
        assert_eq!(s.timeout(Signal::Traces), Duration::from_secs(30));
        assert_eq!(s.timeout(Signal::Logs), Duration::from_secs(30));
        let warnings: Vec<&String> = s
            .notes
            .iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .map(|(_, line)| line)
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "OTEL_EXPORTER_OTLP_TIMEOUT=600000 taken as 30000, \
                 OTEL_EXPORTER_OTLP_LOGS_TIMEOUT=18446744073709551615 taken as 30000"
            ),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn delays_and_intervals_below_their_floor_are_raised_with_one_warning() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "5"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ]);
        assert_eq!(
            s.clamped,
            vec![
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_string()),
                ("OTEL_BLRP_SCHEDULE_DELAY", "100".to_string()),
            ]
        );
        let warnings: Vec<&String> = s
            .notes
            .iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .map(|(_, note)| note)
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "OTEL_BSP_SCHEDULE_DELAY=0 taken as 100, OTEL_METRIC_EXPORT_INTERVAL=0 taken as 1000, \
                 OTEL_BLRP_SCHEDULE_DELAY=5 taken as 100: "
            ),
            "{}",
            warnings[0]
        );
        // At or above the floor, not a number, or the signal off: nothing said.
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "soon"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ]);
        assert!(s.clamped.is_empty() && s.notes.is_empty(), "{s:?}");
    }

    #[test]
    fn batch_sizes_out_of_bounds_are_clamped_with_one_warning() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100000000000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "4096"),
            ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "lots"),
        ]);
        assert_eq!(
            s.clamped,
            vec![
                ("OTEL_BSP_MAX_QUEUE_SIZE", "8192".to_string()),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1".to_string()),
            ]
        );
        let warnings: Vec<&String> = s
            .notes
            .iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .map(|(_, note)| note)
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("OTEL_BSP_MAX_QUEUE_SIZE=100000000000 taken as 8192"));
        // Values within bounds, or export off: nothing to change, nothing said.
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2048"),
        ]);
        assert!(s.clamped.is_empty() && s.notes.is_empty(), "{s:?}");
        let s = settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]);
        assert!(s.clamped.is_empty(), "{s:?}");
    }

    #[test]
    fn undelivered_telemetry_is_one_line_naming_the_collector() {
        let endpoints = [
            Some("http://u:pw@c:4318/?k=s".to_string()),
            Some("http://u:pw@c:4318/?k=s".to_string()),
            Some("http://other:4317".to_string()),
        ];
        let line = undelivered_line(
            &[
                (Signal::Metrics, Some("connection refused".into())),
                (Signal::Traces, Some("connection refused".into())),
                (Signal::Logs, None),
            ],
            &endpoints,
        );
        assert_eq!(
            line,
            "the last telemetry (metrics, traces) could not be delivered to the collector at \
             http://REDACTED:REDACTED@c:4318/?REDACTED: connection refused; the last telemetry \
             (logs) could not be delivered to the collector at http://other:4317"
        );
    }

    #[test]
    fn the_otlp_http_client_keeps_the_collectors_name_and_forgets_it_when_export_fails() {
        let sink = standin::OtlpSink::start().unwrap();
        let uri: ureq::http::Uri = format!("http://localhost:{}/v1/traces", sink.port)
            .parse()
            .unwrap();
        let request = || {
            Request::builder()
                .method("POST")
                .uri(uri.clone())
                .header("content-type", "application/x-protobuf")
                // No pooled connection left open for the second send to wait on.
                .header("connection", "close")
                .body(Bytes::from_static(b"batch"))
                .unwrap()
        };
        let client = UreqClient::new(Signal::Traces, Duration::from_secs(1));
        assert_eq!(client.send(request()).unwrap().status(), 200);
        assert!(client.resolver.expires(&uri).is_some(), "the name is kept");
        assert_eq!(sink.bodies("/v1/traces"), vec![b"batch".to_vec()]);
        drop(sink);
        // Nothing listens there any more: the export fails, and the name is forgotten.
        assert!(client.send(request()).is_err());
        assert!(
            client.resolver.expires(&uri).is_none(),
            "the name is forgotten"
        );
    }
}
