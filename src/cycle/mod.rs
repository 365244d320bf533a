//! The cycle: the worker's loop and everything that decides what happens to an order.
//! [`worker`] pages through the registered orders and runs them one step at a time,
//! [`schedule`] says what runs next and when a failing service is left alone,
//! [`process`] runs one order's step (decrease, status update) under its span,
//! [`outcome`] and [`retry`] are the pure decisions on a reply, [`pager`] keeps the
//! list's `skip`, and [`report`] counts what a cycle did.
//!
//! It may import the [`crate::services`] clients, the [`crate::state`] records (the
//! journal's trait, the heartbeat), [`crate::telemetry::instrument`], and from the root
//! the values every layer reads: [`crate::config`], [`crate::stop`] and
//! [`crate::logging`] (an order's log fields, text shortened for a line). Start-up
//! ([`crate::startup`]) imports it, and the crate's root re-exports [`worker::Worker`],
//! [`report::CycleReport`] and [`outcome::Outcome`].

pub mod outcome;
pub mod pager;
pub mod process;
pub mod report;
pub mod retry;
pub mod schedule;
pub mod worker;
