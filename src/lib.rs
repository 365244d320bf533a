//! The order-management worker of the wood-shop demo.
//!
//! It pages through the Order Service's `registered` orders, decreases the Stock
//! Service's stock for each, and sets the order `ready`, `blocked` or `unknown`; see
//! README.md for the settings and exit codes, docs/how-it-works.md for the cycle and
//! its timeouts, docs/telemetry.md for the outcomes.
//!
//! # Map
//!
//! Each behaviour lives in the file named after it; the data flows one way: command
//! line, configuration, start-up, the loop, one order, the clients, HTTP.
//!
//! | module | owns |
//! |---|---|
//! | `main.rs` (the binary) | wiring only: command line, start-up, `run` or `once`, finish, exit code |
//! | [`startup`] | reading the command line, logging and telemetry set up, signal handlers, the start-up line, the state and heartbeat files opened, what is left said at the end; the `healthcheck` command |
//! | [`exit`] | the exit codes, with their `--help` text |
//! | [`cli`] | clap: commands and flags, each with its variable and help heading, the help's examples and OTEL list, turned into an [`Invocation`] |
//! | [`config`] | the validated [`Config`]: each setting's rule and default ([`config::defaults`]), the heartbeat's staleness limit |
//! | [`worker`] | the cycle and the loop: pages, new orders, retries due, sleeping, stopping |
//! | [`pager`] | which `skip` the next list call asks for as orders leave the list |
//! | [`schedule`] | what runs next, and when a failing service gets no calls |
//! | [`process`] | one order's steps (decrease, status update), its span and log fields, the journal told first |
//! | [`outcome`] | the pure decisions: what a reply means for the order |
//! | [`retry`] | which failures are retried, and after how long |
//! | [`report`] | what one cycle did ([`CycleReport`]) |
//! | [`journal`] | the state file: the orders in flight, across a crash |
//! | [`heartbeat`] | the heartbeat file, and the `healthcheck` verdict on it |
//! | [`orders`], [`stock`] | the two services' clients: URLs, bodies, their routes' names, status -> [`http::CallError`] |
//! | [`http`] | the shared agent and timeouts, trace headers and a span per attempt, what the transport said |
//! | [`resolve`] | name lookups, kept for 30 s |
//! | [`telemetry`] | the OpenTelemetry SDK: settings, exporters, shutdown (start-up only) |
//! | [`telemetry::grpc`] | OTLP/gRPC without an async runtime: the exporter's requests as gRPC unary calls of the workspace crate [`grpc_unary`] (a small synchronous HTTP/2 client, `crates/grpc-unary`) |
//! | [`telemetry::instrument`] | the spans, events and metrics the worker records (the API only) |
//! | [`logging`] | stderr lines (text or JSON) and the hook the OTLP logs export is installed in |
//! | [`stop`], [`files`], [`redact`] | the stop flag and signals; files that cannot be aimed elsewhere; credentials kept out of text |
//!
//! # Imports run one way
//!
//! ```text
//! main    -> startup -> cli -> config
//! startup -> telemetry, logging, worker, heartbeat, journal, files, exit
//! worker  -> process, pager, schedule, report, outcome, retry, heartbeat, telemetry::instrument
//! process -> orders, stock, outcome, retry, schedule, logging, telemetry::instrument
//! orders, stock -> http -> resolve, telemetry::instrument
//! telemetry -> logging (installs its export), telemetry::grpc -> grpc_unary (a crate)
//! heartbeat -> report, logging (its timestamps); journal -> process (its trait)
//! ```
//!
//! The [`Config`] travels down as a value (worker and process read it); no module
//! imports one above it, and none below start-up reads clap or the environment.
//!
//! # One order's path
//!
//! 1. [`worker`]: the cycle asks [`orders::OrdersClient::list_registered`] for a page,
//!    from the `skip` the [`pager::Pager`] keeps, and holds its orders.
//! 2. [`schedule::Scheduler`] says what runs next: a new order, a retry that is due, the
//!    next page, or a sleep; a service that keeps failing is left alone for a while.
//! 3. [`process::Journey`] runs the order's next step, at most one request: the journal
//!    first, then [`stock::StockClient::decrease`] (or a simulated failure), then
//!    [`orders::OrdersClient::set_status`]; each under the order's span, with its log
//!    fields ([`process::order_fields`]).
//! 4. The clients send through [`http::Http`], which starts an
//!    [`telemetry::instrument::HttpAttempt`] and reports a [`http::Reply`] or a
//!    [`http::SendError`]; the client turns it into a [`http::CallError`].
//! 5. [`outcome`] decides what that means ([`Outcome`]), [`retry`] whether and when to
//!    try again; the worker logs the order's line and counts it in the
//!    [`CycleReport`], which the [`heartbeat`] and the metrics
//!    ([`telemetry::instrument::instruments`]) then carry.

// No input can panic the process (a peer's bytes, a file's, a setting's): outside
// tests a panic is an abort (`panic = "abort"`) that cuts the order in flight short.
// Modules that parse a peer's or a file's bytes also deny `clippy::indexing_slicing`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
pub mod config;
pub mod cycle;
pub mod exit;
#[doc(hidden)]
pub mod fuzz;
pub mod logging;
pub mod redact;
pub mod services;
pub mod startup;
pub mod state;
pub mod stop;
pub mod telemetry;

pub use config::{Config, ConfigError, HealthcheckConfig, Invocation, Mode, Shard};
pub use cycle::outcome::Outcome;
pub use cycle::worker::{CycleReport, Worker};
pub use services::orders::{Order, OrderStatus, WoodType};
pub use state::in_flight::{InFlight, Journal, NoJournal};
pub use stop::Stop;
