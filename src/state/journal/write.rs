//! Writing records at the file's end: an append that fails is cut off again, or the
//! file is marked stale; a decision that cannot be appended (a full disk) is written
//! over its order's `sending` record, in place.

// Part of the journal, which reads a file's bytes: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::io;
use std::os::unix::fs::FileExt;

use super::record::{Op, Record, record_line};
use super::{FileJournal, Slot};
use crate::services::orders::{Order, OrderStatus};
use crate::state::in_flight::InFlight;

impl FileJournal {
    /// Appends `line` (newline included) at the end and syncs it. On failure, what was
    /// written of it is cut off again; if even that fails, the file is stale.
    pub(super) fn append(&mut self, line: &[u8]) -> io::Result<()> {
        self.append_with(line, true)
    }

    /// [`FileJournal::append`]; without `sync`, the line rides on the next record's
    /// sync (a process that dies keeps it: the kernel holds it; only a crash of the
    /// machine before the next sync loses it).
    pub(super) fn append_with(&mut self, line: &[u8], sync: bool) -> io::Result<()> {
        match self.write_at_end(line, sync) {
            Ok(()) => {
                self.end += line.len() as u64;
                self.lines += 1;
                self.written += 1;
                if sync {
                    self.durable = self.written;
                }
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self
                    .file
                    .set_len(self.end)
                    .and_then(|()| self.file.sync_data())
                {
                    self.stale = Some(format!("a failed write ({e}) could not be cut off ({cut})"));
                }
                Err(e)
            }
        }
    }

    fn write_at_end(&self, line: &[u8], sync: bool) -> io::Result<()> {
        #[cfg(test)]
        if self.disk_full {
            // What a full disk does: part of the line lands, then ENOSPC.
            self.file.write_all_at(&line[..line.len() / 2], self.end)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(line, self.end)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Records the decision: with `sync`, durable on return; without, at the next sync
    /// ([`Journal::decided_soon`](crate::state::in_flight::Journal::decided_soon)).
    pub(super) fn decide(
        &mut self,
        order: &Order,
        status: OrderStatus,
        sync: bool,
    ) -> io::Result<()> {
        // Memory holds the truth whatever the file can take: a rewrite writes it.
        self.live
            .insert(order.id, (*order, InFlight::Decided(status)));
        let slot = self.take_slot(order.id);
        let failed = if self.stale.is_some() {
            match self.bring_up_to_date() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        } else {
            let line = record_line(
                &Record::new(Op::Decided, order, Some(status))
                    .with_trace(self.traces.get(&order.id)),
            )?;
            match self.append_with(&[line.as_slice(), b"\n"].concat(), sync) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            }
        };
        // A full disk: the sending record's own bytes take the decision.
        let in_place = match slot {
            Some(slot) => self.decide_in_place(slot, order, status),
            None => Err(io::Error::other("no sending record to write it over")),
        };
        match in_place {
            Ok(()) => {
                log::warn!(
                    "order {}: its decision ({status}) could not be appended to the state file ({failed}); \
                     written over its sending record instead",
                    order.id
                );
                Ok(())
            }
            Err(in_place) => {
                if self.stale.is_none() {
                    self.stale = Some(format!(
                        "order {}'s decision could not be written: {failed}",
                        order.id
                    ));
                }
                if slot.is_some() {
                    self.at_risk.push((order.id, status));
                    log::error!(
                        "order {}: its decision ({status}) cannot be written to the state file ({failed}; \
                         in place: {in_place}); until the file is rewritten a restart would set it \
                         unknown, and no decrease is sent",
                        order.id
                    );
                }
                Err(failed)
            }
        }
    }

    /// Removes and returns the order's `sending` record's place.
    pub(super) fn take_slot(&mut self, id: u64) -> Option<Slot> {
        let i = self.slots.iter().position(|(o, _)| *o == id)?;
        Some(self.slots.swap_remove(i).1)
    }

    /// Writes the decision over the order's `sending` record, in place.
    fn decide_in_place(&self, slot: Slot, order: &Order, status: OrderStatus) -> io::Result<()> {
        let mut record = record_line(
            &Record::new(Op::Decided, order, Some(status)).with_trace(self.traces.get(&order.id)),
        )?;
        if record.len() > slot.len {
            return Err(io::Error::other(
                "the decision does not fit its sending record",
            ));
        }
        record.resize(slot.len, b' ');
        self.file.write_all_at(&record, slot.offset)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::state::in_flight::Journal;
    use crate::state::journal::testing::{order, temp_dir};

    /// A journey against stand-in services, with `journal`.
    fn journey(
        stack: &standin::Stack,
        journal: Box<dyn Journal>,
    ) -> crate::cycle::process::Journey {
        let config = crate::Config {
            orders_url: stack.orders_url(),
            stocks_url: stack.stocks_url(),
            error_rate: 0.0,
            max_retries: 0,
            http_timeout: std::time::Duration::from_secs(2),
            decrease_timeout: std::time::Duration::from_secs(2),
            ..crate::Config::default()
        };
        crate::cycle::process::Journey::new(&config, journal)
    }

    fn stand_in_with_one_order() -> (standin::Stack, Order) {
        let stack = standin::Stack::start(0, 0, standin::Knobs::default()).unwrap();
        stack.add_stock("elm", 100);
        let id = stack.add_order("elm", 4);
        (stack, order(id))
    }

    fn status_of(stack: &standin::Stack, id: u64) -> String {
        let orders = stack.orders();
        orders.iter().find(|o| o.id == id).unwrap().status.clone()
    }

    #[test]
    fn a_sending_record_that_cannot_be_written_sends_nothing() {
        let dir = temp_dir("full-sending");
        let path = dir.join("state.jsonl");
        let (stack, order) = stand_in_with_one_order();
        let mut journal = FileJournal::open(&path).unwrap();
        journal.sending(&self::order(999)).unwrap();
        let before = fs::read(&path).unwrap();
        journal.disk_full = true;
        let mut journey = journey(&stack, Box::new(journal));
        let outcome = journey.run_to_end(order);
        assert!(
            matches!(
                outcome,
                crate::cycle::outcome::Outcome::Deferred {
                    cause: crate::cycle::outcome::Deferral::Fatal,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(stack.ledger().is_empty(), "no decrease was sent");
        assert_eq!(status_of(&stack, order.id), "registered");
        // The half line the full disk took was cut off again.
        assert_eq!(fs::read(&path).unwrap(), before);
        drop(journey);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A journal whose disk fills up right after the `sending` record.
    struct FullAfterSending(FileJournal);

    impl Journal for FullAfterSending {
        fn sending(&mut self, order: &Order) -> io::Result<()> {
            self.0.sending(order)?;
            self.0.disk_full = true;
            Ok(())
        }
        fn decided(&mut self, order: &Order, status: OrderStatus) -> io::Result<()> {
            self.0.decided(order, status)
        }
        fn finished(&mut self, order: &Order) -> io::Result<()> {
            self.0.finished(order)
        }
        fn in_flight(&self) -> Vec<(Order, InFlight)> {
            self.0.in_flight()
        }
    }

    #[test]
    fn a_decision_on_a_full_disk_lands_in_place_and_a_restart_keeps_the_order_ready() {
        let dir = temp_dir("full-decided");
        let path = dir.join("state.jsonl");
        let (stack, order) = stand_in_with_one_order();
        let journal = FullAfterSending(FileJournal::open(&path).unwrap());
        let mut journey = journey(&stack, Box::new(journal));
        // Stock taken, decision written in place, status set; `finished` fails.
        let outcome = journey.run_to_end(order);
        assert_eq!(outcome, crate::cycle::outcome::Outcome::Ready);
        drop(journey); // the process ends with the disk still full
        assert_eq!(status_of(&stack, order.id), "ready");
        // The file says the order is decided ready, not that its decrease was being sent.
        let reopened = FileJournal::open(&path).unwrap();
        assert_eq!(
            reopened.in_flight(),
            vec![(order, InFlight::Decided(OrderStatus::Ready))]
        );
        // A restart retries the same status: the order stays ready, its stock taken once.
        let config = crate::Config {
            orders_url: stack.orders_url(),
            stocks_url: stack.stocks_url(),
            error_rate: 0.0,
            max_retries: 0,
            ..crate::Config::default()
        };
        let report =
            crate::Worker::with_journal(&config, crate::Stop::new(), Box::new(reopened)).cycle();
        assert!(report.complete(), "{report:?}");
        assert_eq!(status_of(&stack, order.id), "ready");
        assert_eq!(stack.ledger().len(), 1);
        assert!(stack.violations().is_empty(), "{:?}", stack.violations());
        fs::remove_dir_all(dir).unwrap();
    }
}
