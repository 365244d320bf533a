//! The two services the worker talks to: their clients ([`orders`], [`stock`]: URLs,
//! bodies, what each status code means, as a [`http::CallError`]), the shared HTTP
//! agent with its timeouts, trace headers and a span per attempt ([`http`]), name
//! lookups kept for 30 s ([`resolve`]), and the lines of a service that stops answering
//! ([`outage`]).
//!
//! It may import [`crate::telemetry::instrument`] and [`crate::redact`], nothing of
//! the cycle or the state. The cycle ([`crate::cycle`]), the state file's records
//! ([`crate::state`], which name orders) and the fuzz entry points import it.

pub mod http;
pub mod orders;
pub mod outage;
pub mod resolve;
pub mod stock;
