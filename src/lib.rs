//! The order-management worker of the wood-shop demo.
//!
//! It pages through the Order Service's `registered` orders, decreases the Stock
//! Service's stock for each, and sets the order `ready`, `blocked` or `unknown`; see
//! README.md for the settings and exit codes, docs/how-it-works.md for the cycle and
//! its timeouts, docs/telemetry.md for the outcomes.
//!
//! # Map
//!
//! Four folders, one part each, and start-up at the root; the data flows one way:
//! command line, configuration, start-up, the cycle, the services, HTTP.
//!
//! | folder | part | holds |
//! |---|---|---|
//! | [`cycle`] | the loop and the decisions on an order | `worker` (the loop and the cycle, its jobs in `worker/`), `schedule`, `process` (one order's steps), `outcome`, `retry`, `pager`, `report` |
//! | [`services`] | the Order and Stock Services | `orders`, `stock` (the clients), `http` (the shared agent, a span per attempt), `resolve`, `outage` |
//! | [`state`] | the state on disk | `journal` (the state file), `in_flight` (its trait and records), `heartbeat`, `files` |
//! | [`telemetry`] | OpenTelemetry | settings, exporters and shutdown (start-up only), `grpc` (OTLP/gRPC over the workspace crate [`grpc_unary`], `crates/grpc-unary`), `instrument` (the spans and metrics the worker records), `spans` (the OTLP trace request, encoded from the SDK's spans) |
//! | the root | start-up, and the values every layer reads | `main.rs` (wiring only), [`startup`], [`cli`] (clap), [`config`] (the validated [`Config`]), [`exit`] (exit codes); read by every layer: [`config`], [`stop`] (the stop flag and signals), [`logging`] (stderr lines, an order's log fields), [`redact`] (credentials kept out of text) |
//!
//! # Imports run one way
//!
//! ```text
//! main -> startup -> cli -> config
//! startup -> cycle, state, telemetry, logging, exit
//! cycle -> services, state, telemetry::instrument
//! state -> services (the order types)
//! services -> telemetry::instrument
//! telemetry -> grpc_unary (a crate)
//! every folder -> config, stop, logging, redact (leaves: they import no folder)
//! ```
//!
//! No folder imports one above it. The [`Config`] travels down as a value (the cycle
//! reads it), and nothing below start-up reads clap or the environment. Each folder's
//! `mod.rs` says what it may import and what imports it.
//!
//! # One order's path
//!
//! 1. [`worker`](cycle::worker): the cycle asks [`orders::OrdersClient::list_registered`](services::orders::OrdersClient::list_registered) for a page,
//!    from the `skip` the [`pager::Pager`](cycle::pager::Pager) keeps, and holds its orders.
//! 2. [`schedule::Scheduler`](cycle::schedule::Scheduler) says what runs next: a new order, a retry that is due, the
//!    next page, or a sleep; a service that keeps failing is left alone for a while.
//! 3. [`process::Journey`](cycle::process::Journey) runs the order's next step, at most one request: the journal
//!    first, then [`stock::StockClient::decrease`](services::stock::StockClient::decrease) (or a simulated failure), then
//!    [`orders::OrdersClient::set_status`](services::orders::OrdersClient::set_status); each under the order's span, with its log
//!    fields ([`process::order_fields`](cycle::process::order_fields)).
//! 4. The clients send through [`http::Http`](services::http::Http), which starts an
//!    [`telemetry::instrument::HttpAttempt`] and reports a [`http::Reply`](services::http::Reply) or a
//!    [`http::SendError`](services::http::SendError); the client turns it into a [`http::CallError`](services::http::CallError).
//! 5. [`outcome`](cycle::outcome) decides what that means ([`Outcome`]), [`retry`](cycle::retry) whether and when to
//!    try again; the worker logs the order's line and counts it in the
//!    [`CycleReport`], which the [`heartbeat`](state::heartbeat) and the metrics
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
