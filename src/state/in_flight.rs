//! What the state file records, as the cycle sees it: the [`Journal`] the worker tells
//! before each step that a crash could lose ([`crate::state::journal::FileJournal`] on
//! disk, [`NoJournal`] in memory), what a previous run left [`InFlight`], and the form
//! in which an order's trace is kept ([`trace_ref`]).

// Parses what a file holds (an order's trace as the journal keeps it): no index or
// slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::io;

use crate::services::orders::{Order, OrderStatus};
use opentelemetry::trace::SpanContext;

/// What a previous run left unfinished for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// A decrease was (perhaps) sent and its outcome is not recorded: in doubt.
    Sent,
    /// The status to set is decided (`ready`: stock taken); only the update is left.
    Decided(OrderStatus),
    /// Quarantined ([`crate::cycle::outcome::Outcome::Quarantined`]): decided (`Some`, only
    /// its update left) or nothing taken (`None`); `times` in a row, tried again after
    /// `until_ms` (milliseconds since the Unix epoch).
    Quarantined {
        status: Option<OrderStatus>,
        times: u32,
        until_ms: u64,
    },
}

/// Where the worker writes down, before each step, what it is about to do, so that a
/// crash leaves a record of what may have happened (see [`crate::state::journal`]).
pub trait Journal {
    /// Before a decrease is sent. An error stops the order before anything is sent.
    fn sending(&mut self, order: &Order) -> io::Result<()>;
    /// The decrease's outcome is known and the status chosen; before the status update.
    fn decided(&mut self, order: &Order, status: OrderStatus) -> io::Result<()>;
    /// [`Journal::decided`], with the order's trace kept in the record (see
    /// [`trace_ref`]) so that a restart continues it. By default the trace is not kept.
    fn decided_in(
        &mut self,
        order: &Order,
        status: OrderStatus,
        trace: &SpanContext,
    ) -> io::Result<()> {
        let _ = trace;
        self.decided(order, status)
    }
    /// [`Journal::decided_in`], without waiting for the disk: the record is durable
    /// once [`Journal::durable`] reaches the mark returned (the next `sending` syncs
    /// it, or [`Journal::sync`]); the status update waits until then. By default the
    /// record is durable at once.
    fn decided_soon(
        &mut self,
        order: &Order,
        status: OrderStatus,
        trace: &SpanContext,
    ) -> io::Result<u64> {
        self.decided_in(order, status, trace).map(|()| 0)
    }
    /// The mark up to which records are durable ([`Journal::decided_soon`]).
    fn durable(&self) -> u64 {
        u64::MAX
    }
    /// Makes every record written so far durable.
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// True when the journal outlives the process (a state file).
    fn keeps_state(&self) -> bool {
        false
    }
    /// The trace kept with an order in flight, if any.
    fn trace_of(&self, id: u64) -> Option<String> {
        let _ = id;
        None
    }
    /// The order is quarantined (see [`InFlight::Quarantined`]); by default not kept.
    fn quarantined(
        &mut self,
        order: &Order,
        status: Option<OrderStatus>,
        times: u32,
        until_ms: u64,
    ) -> io::Result<()> {
        let _ = (order, status, times, until_ms);
        Ok(())
    }
    /// The status is set, or nothing was taken: the order can be forgotten.
    fn finished(&mut self, order: &Order) -> io::Result<()>;
    /// Orders a previous run left unfinished.
    fn in_flight(&self) -> Vec<(Order, InFlight)>;
}

/// The in-memory default: the worker's own pending list is the only record, and a
/// restart forgets it.
#[derive(Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn sending(&mut self, _: &Order) -> io::Result<()> {
        Ok(())
    }
    fn decided(&mut self, _: &Order, _: OrderStatus) -> io::Result<()> {
        Ok(())
    }
    fn finished(&mut self, _: &Order) -> io::Result<()> {
        Ok(())
    }
    fn in_flight(&self) -> Vec<(Order, InFlight)> {
        Vec::new()
    }
}

/// An order's trace as the journal keeps it: `trace_id-span_id`, in hex.
pub fn trace_ref(span: &SpanContext) -> String {
    format!("{}-{}", span.trace_id(), span.span_id())
}

/// The span context a journal's trace names (a remote parent for the order's next
/// span); `None` for anything else.
pub fn parse_trace_ref(text: &str) -> Option<SpanContext> {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let (trace, span) = text.split_once('-')?;
    let (trace, span) = (TraceId::from_hex(trace).ok()?, SpanId::from_hex(span).ok()?);
    let context = SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::NONE);
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_kept_in_the_journal_reads_back_as_the_same_span_context() {
        let text = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        let context = parse_trace_ref(text).unwrap();
        assert!(context.is_remote());
        assert_eq!(trace_ref(&context), text);
        for bad in [
            "",
            "x",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "0-0",
            "00000000000000000000000000000000-0000000000000000",
        ] {
            assert!(parse_trace_ref(bad).is_none(), "{bad}");
        }
    }
}
