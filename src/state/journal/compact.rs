//! Compaction: the file rewritten from memory with the orders in flight only, through
//! a new locked temporary file renamed into place; when it has grown, when it is stale
//! (a write failed), and at open and exit.

// Part of the journal, which reads a file's bytes: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::open::try_lock;
use super::owner::{Owner, OwnerLine, OwnerOp};
use super::record::{Live, Op, Record, Traces, record_line, sending_line};
use super::{FileJournal, Slot, Slots};
use crate::state::in_flight::InFlight;

/// Appended lines allowed beyond twice the live orders before a compaction.
const COMPACT_SLACK: usize = 256;

impl FileJournal {
    /// Rewrites the file from memory when it is stale; an error leaves it stale.
    pub(super) fn bring_up_to_date(&mut self) -> io::Result<()> {
        let Some(why) = self.stale.clone() else {
            return Ok(());
        };
        self.compact().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("state file out of date ({why}) and cannot be rewritten: {e}"),
            )
        })?;
        log::info!(
            "state file {} rewritten and up to date again",
            self.path.display()
        );
        self.stale = None;
        self.at_risk.clear();
        Ok(())
    }

    pub(super) fn compact_if_large(&mut self) -> io::Result<()> {
        if self.lines > 2 * self.live.len() + COMPACT_SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with the live orders only.
    pub(super) fn compact(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.disk_full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let (file, end, slots) = write_compacted(
            &self.path,
            &self.tmp,
            &self.live,
            &self.traces,
            self.owner.as_ref(),
        )?;
        self.slots = slots;
        let old = std::mem::replace(&mut self.file, file);
        if old.metadata().is_ok_and(|m| m.nlink() > 0) {
            log::warn!(
                "state file {}: another name (a hard link) reaches the file it replaces; \
                 that file stays locked until the worker exits",
                self.path.display()
            );
            self.retired.push(old);
        }
        self.end = end;
        self.lines = self.live.len();
        self.durable = self.written;
        Ok(())
    }
}

/// Writes the live orders to a new temporary file (created, never opened through a path
/// that exists), locks it, syncs it, renames it over the journal and syncs the
/// directory; returns it, for writing at its end, that end, and where its `sending`
/// records lie.
pub(super) fn write_compacted(
    path: &Path,
    tmp: &Path,
    live: &Live,
    traces: &Traces,
    owner: Option<&Owner>,
) -> io::Result<(File, u64, Slots)> {
    let mut slots = Vec::new();
    let file = crate::state::files::create_new(tmp)?;
    let written = (|| {
        // Locked before it takes the journal's place: a worker opening the path from
        // then on finds it locked.
        try_lock(&file).map_err(|e| {
            e.unwrap_or_else(|| io::Error::other("the new state file is locked by another process"))
        })?;
        let mut out = io::BufWriter::new(&file);
        let mut offset = 0;
        if let Some(owner) = owner {
            let mut line = serde_json::to_vec(&OwnerLine {
                op: OwnerOp::Owner,
                orders: owner.orders.clone(),
                stocks: owner.stocks.clone(),
                shard: owner.shard.clone(),
            })
            .map_err(io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
            offset += line.len() as u64;
        }
        for (order, state) in live.values() {
            let line = match state {
                InFlight::Sent => {
                    let (line, len) = sending_line(order)?;
                    slots.push((order.id, Slot { offset, len }));
                    line
                }
                InFlight::Decided(s) => {
                    let mut line = record_line(
                        &Record::new(Op::Decided, order, Some(*s))
                            .with_trace(traces.get(&order.id)),
                    )?;
                    line.push(b'\n');
                    line
                }
                InFlight::Quarantined {
                    status,
                    times,
                    until_ms,
                } => {
                    let mut line = record_line(
                        &Record::quarantine(order, *status, *times, *until_ms)
                            .with_trace(traces.get(&order.id)),
                    )?;
                    line.push(b'\n');
                    line
                }
            };
            out.write_all(&line)?;
            offset += line.len() as u64;
        }
        out.flush()?;
        drop(out);
        file.sync_all()?;
        let end = file.metadata()?.len();
        fs::rename(tmp, path)?;
        Ok(end)
    })();
    let end = match written {
        Ok(end) => end,
        Err(e) => {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok((file, end, slots))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};

    use super::*;
    use crate::services::orders::OrderStatus;
    use crate::state::in_flight::Journal;
    use crate::state::journal::testing::{order, temp_dir};

    #[test]
    fn while_the_file_is_out_of_date_no_decrease_is_sent_until_a_rewrite_works() {
        let dir = temp_dir("stale");
        let path = dir.join("state.jsonl");
        let mut j = FileJournal::open(&path).unwrap();
        j.sending(&order(1)).unwrap();
        // Every write fails now, in place too (/dev/full answers ENOSPC to each one).
        j.file = OpenOptions::new().write(true).open("/dev/full").unwrap();
        assert!(j.decided(&order(1), OrderStatus::Ready).is_err());
        assert!(j.stale.is_some());
        assert_eq!(j.at_risk, [(1, OrderStatus::Ready)]);
        // No sending while the file cannot be brought up to date.
        j.disk_full = true;
        assert!(j.sending(&order(2)).is_err());
        assert!(!j.in_flight().iter().any(|(o, _)| o.id == 2));
        // Once a rewrite works, the file says what memory says, and work goes on.
        j.disk_full = false;
        j.sending(&order(2)).unwrap();
        assert!(j.stale.is_none() && j.at_risk.is_empty());
        drop(j);
        assert_eq!(
            FileJournal::open(&path).unwrap().in_flight(),
            vec![
                (order(1), InFlight::Decided(OrderStatus::Ready)),
                (order(2), InFlight::Sent)
            ]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_file_stays_small_as_orders_finish() {
        let dir = temp_dir("compact");
        let path = dir.join("state.jsonl");
        let mut j = FileJournal::open(&path).unwrap();
        for id in 1..=2_000 {
            j.sending(&order(id)).unwrap();
            j.decided(&order(id), OrderStatus::Ready).unwrap();
            j.finished(&order(id)).unwrap();
        }
        j.sending(&order(5_000)).unwrap();
        let lines = fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= COMPACT_SLACK + 3, "{lines} lines");
        drop(j);
        assert_eq!(
            FileJournal::open(&path).unwrap().in_flight(),
            vec![(order(5_000), InFlight::Sent)]
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
