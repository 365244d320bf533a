//! A durable journal of the orders in flight (`--state-file`): one JSON line per step,
//! written and `fsync`ed before the step it protects, so that a crash at any instant
//! leaves a record of what may have happened.
//!
//! - `sending`: a decrease is about to be sent (the stock may be taken from now on);
//! - `decided`: the decrease's outcome is known and the order's status is chosen
//!   (`ready`: stock taken; `blocked`: not taken; `unknown`: in doubt);
//! - `finished`: the status is set, or nothing was taken: the order is forgotten.
//!
//! It fails closed. A `sending` record that cannot be written and synced is an error,
//! and the caller sends nothing. A failed append is cut off again (no half line stays
//! behind). A `sending` record is padded with spaces to the length of its `decided`
//! record, so that when appending `decided` fails (a full disk) the decision is written
//! over it in place, in blocks the file already owns: a restart then retries the status
//! update instead of setting an order `unknown` whose status is already set. When the
//! file cannot be brought up to date, it is rewritten from memory before the next
//! `sending`, and until that works no decrease is sent.
//!
//! On open, the journal is replayed (a torn last line, as a crash leaves it, is ignored
//! with a warning; damage anywhere else refuses to start) and compacted: rewritten
//! through a temporary file and a rename, keeping only unfinished orders.
//!
//! A second worker is kept away by two locks (`flock`): on the state file itself, so
//! that another name for it (a hard link, a symbolic link to its directory) is refused
//! too, taken on each new file before it is renamed into place; and on `PATH.lock`
//! beside it. The state file, its lock and its temporary file are regular files or do
//! not exist (see [`crate::state::files`]), and a state file with a second hard link is
//! refused at start.
//!
//! Laid out by job: this file holds the journal (its limits, its errors, the
//! [`Journal`] it implements, and what it does at exit); `record` holds the records,
//! their lines and the replay; `owner` what a file belongs to; `open` the opening, its
//! checks and locks; `write` the appends and the decision written in place; `compact`
//! the rewrites.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod compact;
mod open;
mod owner;
mod record;
#[cfg(test)]
mod testing;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use record::{Op, Record, Traces, record_line, sending_line};

use crate::services::orders::{Order, OrderStatus};
use crate::state::in_flight::{InFlight, Journal, trace_ref};

pub use open::{companion_paths, peek, read_only};
pub use owner::Owner;
pub use record::replay_bytes;

/// The largest state file read at start: a larger one is refused unread. The file is
/// read as a stream, a line at a time, keeping only the orders in flight, so its size
/// costs no memory; [`MAX_IN_FLIGHT`] bounds what is kept.
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The most orders in flight a state file may hold at any point of its replay: 4 x the
/// worker's cap on pending status updates, which with a page of new orders bounds what
/// a run leaves in flight. Each costs about 1 KB once the worker holds it as a pending
/// update, so this keeps a start within the manifests' 64Mi; a file holding more was not
/// written by these rules and is refused, untouched, rather than read into memory.
pub const MAX_IN_FLIGHT: usize = 16_384;

/// Why a journal cannot be used; the worker must not start then.
#[derive(Debug)]
pub enum JournalError {
    /// Another process holds the lock: the state file's path, and the process id the
    /// holder wrote into `PATH.lock` when it could be read.
    Locked(PathBuf, Option<u32>),
    /// A line other than the last cannot be read: refusing is safer than guessing.
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    /// The path cannot hold a state file (a FIFO, a device, a directory, a symbolic
    /// link, a file with a second hard link, one too large to read).
    Unusable {
        path: PathBuf,
        detail: String,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// The file was written for other services or another shard.
    Foreign {
        path: PathBuf,
        theirs: Box<Owner>,
        ours: Box<Owner>,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Locked(p, Some(pid)) => {
                write!(
                    f,
                    "another run (pid {pid}) holds {}; nothing done",
                    p.display()
                )
            }
            JournalError::Locked(p, None) => {
                write!(f, "another run holds {}; nothing done", p.display())
            }
            JournalError::Corrupt { path, line, detail } => {
                write!(
                    f,
                    "state file {} is damaged at line {line} ({detail}); move it aside after checking the orders it names",
                    path.display()
                )
            }
            JournalError::Unusable { path, detail } => {
                write!(f, "state file {}: {detail}", path.display())
            }
            JournalError::Io { path, error } => write!(f, "state file {}: {error}", path.display()),
            JournalError::Foreign { path, theirs, ours } => write!(
                f,
                "state file {} belongs to another worker ({theirs}); this one is for {ours}: give \
                 each stack and shard a state file of its own (--state-file, STATE_FILE)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for JournalError {}

/// Where a `sending` record lies in the file: its offset and length (without the
/// newline), room for its order's `decided` record.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    len: usize,
}

/// Orders and their `sending` records' places.
type Slots = Vec<(u64, Slot)>;

/// The journal in a file.
pub struct FileJournal {
    /// Records written, and of them those known on disk (synced): a record written
    /// without a sync ([`Journal::decided_soon`]) is durable once `durable` reaches the
    /// count it was written at.
    written: u64,
    durable: u64,
    /// What the file belongs to, written first at every rewrite.
    owner: Option<Owner>,
    path: PathBuf,
    tmp: PathBuf,
    /// The state file, locked; written at `end` (the worker is its only writer).
    file: File,
    end: u64,
    live: BTreeMap<u64, (Order, InFlight)>,
    /// The traces of the decided orders in `live` that have one.
    traces: Traces,
    /// The `sending` records of the orders in flight with no decision yet (a few at
    /// most: the order in hand, and at start those a crash left).
    slots: Slots,
    lines: usize,
    /// Why the file no longer says what `live` says (a write that failed), until a
    /// rewrite succeeds; no `sending` is accepted meanwhile.
    stale: Option<String>,
    /// Orders decided while the file could record nothing: it still says their decrease
    /// was being sent, so a restart now would set them `unknown`.
    at_risk: Vec<(u64, OrderStatus)>,
    /// Test only: the disk is full (appends fail part way, rewrites fail, writes in
    /// place succeed).
    #[cfg(test)]
    disk_full: bool,
    /// Files replaced by a compaction while another name (a hard link made meanwhile)
    /// still reached them: kept open and locked, so no worker takes them up.
    retired: Vec<File>,
    /// `PATH.lock`, held for the life of the process.
    _lock: File,
}

/// An I/O error at `at`: a path that cannot hold a state file (see [`crate::state::files`]), or
/// another failure.
fn io_at(at: &Path, error: io::Error) -> JournalError {
    match error.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => JournalError::Unusable {
            path: at.to_path_buf(),
            detail: error.to_string(),
        },
        _ => JournalError::Io {
            path: at.to_path_buf(),
            error,
        },
    }
}

impl Journal for FileJournal {
    fn sending(&mut self, order: &Order) -> io::Result<()> {
        self.bring_up_to_date()?;
        let (line, len) = sending_line(order)?;
        let offset = self.end;
        self.append(&line)?;
        self.live.insert(order.id, (*order, InFlight::Sent));
        self.take_slot(order.id);
        self.slots.push((order.id, Slot { offset, len }));
        Ok(())
    }

    fn decided(&mut self, order: &Order, status: OrderStatus) -> io::Result<()> {
        self.decide(order, status, true)
    }

    fn decided_soon(
        &mut self,
        order: &Order,
        status: OrderStatus,
        trace: &opentelemetry::trace::SpanContext,
    ) -> io::Result<u64> {
        if trace.is_valid() {
            self.traces.insert(order.id, trace_ref(trace));
        }
        self.decide(order, status, false)?;
        Ok(self.written)
    }

    fn durable(&self) -> u64 {
        self.durable
    }

    fn keeps_state(&self) -> bool {
        true
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.durable < self.written {
            self.file.sync_data()?;
            self.durable = self.written;
        }
        Ok(())
    }

    fn decided_in(
        &mut self,
        order: &Order,
        status: OrderStatus,
        trace: &opentelemetry::trace::SpanContext,
    ) -> io::Result<()> {
        // With telemetry off the order's span is a no-op whose context is not valid:
        // nothing to continue after a restart.
        if trace.is_valid() {
            self.traces.insert(order.id, trace_ref(trace));
        }
        self.decided(order, status)
    }

    fn trace_of(&self, id: u64) -> Option<String> {
        self.traces.get(&id).cloned()
    }

    fn finished(&mut self, order: &Order) -> io::Result<()> {
        self.traces.remove(&order.id);
        let Some((_, was)) = self.live.remove(&order.id) else {
            return Ok(()); // never journaled (e.g. a simulated failure): nothing to close
        };
        self.take_slot(order.id);
        if self.stale.is_some() {
            return self.bring_up_to_date();
        }
        let line = record_line(&Record::new(Op::Finished, order, None))?;
        // After a status update, the record rides on the next sync: losing it in a
        // crash of the machine only sets the same status again. After a decrease that
        // took nothing, it is synced: lost, it would leave the order "sent", in doubt.
        let sync = !matches!(was, InFlight::Decided(_));
        if let Err(e) = self.append_with(&[line.as_slice(), b"\n"].concat(), sync) {
            // The file still holds the decision: a restart would only set the same
            // status again. Rewritten before the next decrease.
            self.stale = Some(format!("order {} finished but not recorded: {e}", order.id));
            return Err(e);
        }
        self.compact_if_large()
    }

    fn in_flight(&self) -> Vec<(Order, InFlight)> {
        self.live.values().copied().collect()
    }

    fn quarantined(
        &mut self,
        order: &Order,
        status: Option<OrderStatus>,
        times: u32,
        until_ms: u64,
    ) -> io::Result<()> {
        let state = InFlight::Quarantined {
            status,
            times,
            until_ms,
        };
        self.live.insert(order.id, (*order, state));
        self.take_slot(order.id);
        if self.stale.is_some() {
            return self.bring_up_to_date();
        }
        let line = record_line(
            &Record::quarantine(order, status, times, until_ms)
                .with_trace(self.traces.get(&order.id)),
        )?;
        // Rides on the next sync: lost in a crash of the machine, a restart only tries
        // the order again at once (its decision, if any, is in the file already).
        if let Err(e) = self.append_with(&[line.as_slice(), b"\n"].concat(), false) {
            self.stale = Some(format!("order {}'s quarantine not recorded: {e}", order.id));
            return Err(e);
        }
        self.compact_if_large()
    }
}

impl Drop for FileJournal {
    /// A last try to bring a stale file up to date, what stays at risk named; a file
    /// up to date is compacted (left holding only the orders in flight) and synced.
    fn drop(&mut self) {
        if self.stale.is_none() {
            if self.lines > self.live.len() {
                let _ = self.compact();
            } else {
                let _ = self.file.sync_data();
            }
        }
        if self.stale.is_some()
            && let Err(e) = self.bring_up_to_date()
        {
            let at_risk: Vec<String> = self
                .at_risk
                .iter()
                .map(|(id, status)| format!("{id} ({status})"))
                .collect();
            log::error!(
                "state file {}: {e}; orders decided whose record still says their decrease was \
                 being sent, which a restart will set unknown (set them by hand after that): [{}]",
                self.path.display(),
                at_risk.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::testing::{order, temp_dir};
    use super::*;

    #[test]
    fn a_quarantine_outlives_a_restart_and_a_rewrite() {
        let dir = temp_dir("quarantine");
        let path = dir.join("state.jsonl");
        {
            let mut j = FileJournal::open(&path).unwrap();
            j.sending(&order(1)).unwrap();
            j.decided(&order(1), OrderStatus::Ready).unwrap();
            j.quarantined(&order(1), Some(OrderStatus::Ready), 2, 1_000)
                .unwrap();
            j.quarantined(&order(2), None, 1, 2_000).unwrap();
            j.quarantined(&order(3), None, 1, 3_000).unwrap();
            j.finished(&order(3)).unwrap();
        }
        for _ in 0..2 {
            // Replayed, then rewritten at open: the same both times.
            let j = FileJournal::open(&path).unwrap();
            let mut in_flight = j.in_flight();
            in_flight.sort_by_key(|(o, _)| o.id);
            assert_eq!(
                in_flight,
                vec![
                    (
                        order(1),
                        InFlight::Quarantined {
                            status: Some(OrderStatus::Ready),
                            times: 2,
                            until_ms: 1_000
                        }
                    ),
                    (
                        order(2),
                        InFlight::Quarantined {
                            status: None,
                            times: 1,
                            until_ms: 2_000
                        }
                    ),
                ]
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unfinished_orders_survive_a_reopen_and_finished_ones_are_forgotten() {
        let dir = temp_dir("reopen");
        let path = dir.join("state.jsonl");
        {
            let mut j = FileJournal::open(&path).unwrap();
            j.sending(&order(1)).unwrap();
            j.sending(&order(2)).unwrap();
            j.decided(&order(2), OrderStatus::Ready).unwrap();
            j.sending(&order(3)).unwrap();
            j.decided(&order(3), OrderStatus::Blocked).unwrap();
            j.finished(&order(3)).unwrap();
        }
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(
            j.in_flight(),
            vec![
                (order(1), InFlight::Sent),
                (order(2), InFlight::Decided(OrderStatus::Ready))
            ]
        );
        // Compacted on open: only the two live orders remain.
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_decided_order_keeps_its_trace_across_a_reopen_and_a_compaction() {
        let dir = temp_dir("trace");
        let path = dir.join("state.jsonl");
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        let span = crate::state::in_flight::parse_trace_ref(trace).unwrap();
        {
            let mut j = FileJournal::open(&path).unwrap();
            j.sending(&order(1)).unwrap();
            j.decided_in(&order(1), OrderStatus::Ready, &span).unwrap();
            j.sending(&order(2)).unwrap();
            j.decided_in(&order(2), OrderStatus::Blocked, &span)
                .unwrap();
            j.finished(&order(2)).unwrap();
            assert_eq!(j.trace_of(2), None, "forgotten with its order");
            // Telemetry off: the span's context is not valid, and nothing is kept.
            j.sending(&order(3)).unwrap();
            let none = opentelemetry::trace::SpanContext::NONE;
            j.decided_in(&order(3), OrderStatus::Ready, &none).unwrap();
            assert_eq!(j.trace_of(3), None);
        }
        for _ in 0..2 {
            // The first open replays the appended lines, the second the compacted file.
            let j = FileJournal::open(&path).unwrap();
            assert_eq!(j.trace_of(1).as_deref(), Some(trace));
            assert_eq!(j.trace_of(2), None);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_cap_on_orders_in_flight_is_four_times_the_pending_cap() {
        assert_eq!(MAX_IN_FLIGHT, 4 * crate::cycle::worker::PENDING_CAP);
    }
}
