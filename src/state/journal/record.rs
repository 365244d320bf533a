//! The journal's records, one JSON line each (`sending`, `decided`, `finished`,
//! `quarantined`), how they are written as lines (a `sending` line padded to make room
//! for its decision), and the replay of a state file's lines into the orders in flight.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::owner::{Owner, OwnerLine};
use super::{JournalError, MAX_IN_FLIGHT, io_at};
use crate::services::orders::{Order, OrderStatus, WoodType};
use crate::state::in_flight::InFlight;

/// The longest line read from a state file (a record is about 150 bytes): a longer one
/// is damage, and is not read whole into memory.
const MAX_LINE_BYTES: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Op {
    Sending,
    Decided,
    Finished,
    Quarantined,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    op: Op,
    id: u64,
    wood_type: String,
    quantity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// The order's trace (`trace_id-span_id`, hex), on `decided`: a restart continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
    /// On `quarantined`: the times in a row, and when it is tried again (ms since the
    /// Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    times: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

/// The longest `trace` a record may carry: 32 + 1 + 16 hex digits.
const TRACE_LEN: usize = 49;

impl Record {
    pub(super) fn new(op: Op, order: &Order, status: Option<OrderStatus>) -> Record {
        Record {
            op,
            id: order.id,
            wood_type: order.wood_type.as_str().to_string(),
            quantity: order.quantity,
            status: status.map(|s| s.as_str().to_string()),
            trace: None,
            times: None,
            until: None,
        }
    }

    /// An order's `quarantined` record.
    pub(super) fn quarantine(
        order: &Order,
        status: Option<OrderStatus>,
        times: u32,
        until: u64,
    ) -> Record {
        Record {
            times: Some(times),
            until: Some(until),
            ..Record::new(Op::Quarantined, order, status)
        }
    }

    pub(super) fn with_trace(mut self, trace: Option<&String>) -> Record {
        self.trace = trace.filter(|t| t.len() <= TRACE_LEN).cloned();
        self
    }

    fn order(&self) -> Option<Order> {
        let wood_type = WoodType::parse(&self.wood_type)?;
        (self.id > 0 && self.quantity > 0).then_some(Order {
            id: self.id,
            wood_type,
            quantity: self.quantity,
        })
    }
}

/// A record as one line, without its newline.
pub(super) fn record_line(record: &Record) -> io::Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(io::Error::other)
}

/// An order's `sending` line, padded with spaces (which JSON allows after a value) to
/// the length of its longest `decided` record, and that length (without the newline).
pub(super) fn sending_line(order: &Order) -> io::Result<(Vec<u8>, usize)> {
    let mut line = record_line(&Record::new(Op::Sending, order, None))?;
    // `registered` is the longest status name, and a trace at most TRACE_LEN long.
    let room = record_line(
        &Record::new(Op::Decided, order, Some(OrderStatus::Registered))
            .with_trace(Some(&"0".repeat(TRACE_LEN))),
    )?;
    let len = line.len().max(room.len());
    line.resize(len, b' ');
    line.push(b'\n');
    Ok((line, len))
}

/// Applies the journal's lines in order, read from `file` one at a time (only the
/// orders in flight are kept); the last line may be torn (cut before its newline by a
/// crash).
pub(super) fn replay(
    path: &Path,
    file: impl io::Read,
) -> Result<(Live, Traces, Option<Owner>), JournalError> {
    use std::io::{BufRead, Read};
    let mut live = BTreeMap::new();
    let mut traces = Traces::new();
    let mut owner = None;
    let mut reader = io::BufReader::new(file);
    let mut line = Vec::new();
    let damage = |number: usize, detail: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        line: number,
        detail,
    };
    for number in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| io_at(path, e))?;
        if read == 0 {
            break;
        }
        let terminated = line.last() == Some(&b'\n');
        if !terminated && line.len() as u64 > MAX_LINE_BYTES {
            return Err(damage(
                number,
                format!("a line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        // Without its newline, the line is the file's last: read_until stops only there.
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Ok(line) = serde_json::from_slice::<OwnerLine>(text) {
            owner = Some(Owner {
                orders: line.orders,
                stocks: line.stocks,
                shard: line.shard,
            });
            continue;
        }
        let parsed = serde_json::from_slice::<Record>(text)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                let order = r.order().ok_or("not a valid order")?;
                let status = match (&r.op, r.status.as_deref().map(OrderStatus::parse)) {
                    (Op::Decided | Op::Quarantined, Some(Some(s))) => Some(s),
                    (Op::Decided, _) => return Err("decided without a valid status".into()),
                    (Op::Quarantined, Some(None)) => {
                        return Err("quarantined with an invalid status".into());
                    }
                    _ => None,
                };
                let quarantine = (r.times.unwrap_or(1), r.until.unwrap_or(0));
                Ok((r.op, order, status, r.trace, quarantine))
            });
        match parsed {
            Ok((Op::Sending, order, _, _, _)) => {
                live.insert(order.id, (order, InFlight::Sent));
            }
            Ok((Op::Quarantined, order, status, _, (times, until_ms))) => {
                let state = InFlight::Quarantined {
                    status,
                    times,
                    until_ms,
                };
                live.insert(order.id, (order, state));
                if status.is_none() {
                    traces.remove(&order.id);
                }
            }
            Ok((Op::Decided, order, Some(status), trace, _)) => {
                live.insert(order.id, (order, InFlight::Decided(status)));
                if let Some(trace) = trace {
                    traces.insert(order.id, trace);
                }
            }
            Ok((_, order, _, _, _)) => {
                live.remove(&order.id);
                traces.remove(&order.id);
            }
            // Only a last line without its newline is torn; a complete line that cannot
            // be read is damage wherever it is.
            Err(detail) if !terminated => {
                log::warn!(
                    "state file {}: last record is torn (a crash while writing it?) and is ignored: {detail}",
                    path.display()
                );
            }
            Err(detail) => return Err(damage(number, detail)),
        }
        if live.len() > MAX_IN_FLIGHT {
            return Err(JournalError::Unusable {
                path: path.to_path_buf(),
                detail: format!(
                    "it holds more than {MAX_IN_FLIGHT} orders in flight (at line {number}), more \
                     than a run of this worker leaves; it is left untouched: reconcile its orders \
                     by hand, or split it into files of fewer and run on each"
                ),
            });
        }
    }
    traces.retain(|id, _| live.contains_key(id));
    Ok((live, traces, owner))
}

/// Replays `bytes` as a state file's content, for the fuzzer: what it finds (the
/// orders in flight), or why it refuses them.
pub fn replay_bytes(bytes: &[u8]) -> Result<Vec<(Order, InFlight)>, JournalError> {
    let (live, _, _) = replay(Path::new("(bytes)"), bytes)?;
    Ok(live.into_values().collect())
}

/// The orders in flight, by id.
pub(super) type Live = BTreeMap<u64, (Order, InFlight)>;
/// The traces of decided orders in flight, by id.
pub(super) type Traces = BTreeMap<u64, String>;

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::state::in_flight::Journal;
    use crate::state::journal::testing::{order, temp_dir, unusable};
    use crate::state::journal::{FileJournal, MAX_IN_FLIGHT};

    #[test]
    fn a_decision_with_its_trace_fits_over_its_sending_record() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".to_string();
        let (_, room) = sending_line(&order(u64::MAX)).unwrap();
        let decided = record_line(
            &Record::new(Op::Decided, &order(u64::MAX), Some(OrderStatus::Registered))
                .with_trace(Some(&trace)),
        )
        .unwrap();
        assert!(decided.len() <= room, "{} > {room}", decided.len());
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_the_rest_honoured() {
        let dir = temp_dir("torn");
        let path = dir.join("state.jsonl");
        fs::write(
            &path,
            "{\"op\":\"sending\",\"id\":7,\"wood_type\":\"oak\",\"quantity\":2}\n{\"op\":\"decided\",\"id\":7,\"wood_ty",
        )
        .unwrap();
        let j = FileJournal::open(&path).unwrap();
        assert_eq!(
            j.in_flight(),
            vec![(
                Order {
                    id: 7,
                    wood_type: WoodType::Oak,
                    quantity: 2
                },
                InFlight::Sent
            )]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn damage_before_the_last_line_refuses_to_start() {
        let dir = temp_dir("corrupt");
        let path = dir.join("state.jsonl");
        fs::write(
            &path,
            "garbage\n{\"op\":\"sending\",\"id\":7,\"wood_type\":\"oak\",\"quantity\":2}\n",
        )
        .unwrap();
        match FileJournal::open(&path) {
            Err(JournalError::Corrupt { line: 1, .. }) => {}
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_is_read_a_line_at_a_time_keeping_only_the_orders_in_flight() {
        let dir = temp_dir("stream");
        let path = dir.join("state.jsonl");
        // Far more finished orders than may be in flight at once: read, not kept.
        let mut text = String::new();
        for id in 1..=(MAX_IN_FLIGHT as u64 + 1_000) {
            for op in ["sending", "finished"] {
                text.push_str(&format!(
                    "{{\"op\":\"{op}\",\"id\":{id},\"wood_type\":\"oak\",\"quantity\":2}}\n"
                ));
            }
        }
        text.push_str("{\"op\":\"sending\",\"id\":7,\"wood_type\":\"oak\",\"quantity\":2}\n");
        fs::write(&path, &text).unwrap();
        assert_eq!(FileJournal::open(&path).unwrap().in_flight().len(), 1);
        // Compacted: only the order in flight is left.
        assert!(fs::metadata(&path).unwrap().len() < 200);

        // More in flight than a run leaves: refused, and the file left as it was.
        let mut text = String::new();
        for id in 1..=(MAX_IN_FLIGHT as u64 + 1) {
            text.push_str(&format!(
                "{{\"op\":\"sending\",\"id\":{id},\"wood_type\":\"oak\",\"quantity\":2}}\n"
            ));
        }
        fs::write(&path, &text).unwrap();
        let e = unusable(FileJournal::open(&path));
        assert!(
            e.contains(&format!("more than {MAX_IN_FLIGHT} orders in flight")),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), text);

        // A line longer than any record is damage, not read whole.
        let long = format!("{}\n", "x".repeat(10 * MAX_LINE_BYTES as usize));
        fs::write(
            &path,
            format!(
                "{text_first}{long}",
                text_first = &text[..text.find('\n').unwrap() + 1]
            ),
        )
        .unwrap();
        match FileJournal::open(&path) {
            Err(JournalError::Corrupt {
                line: 2, detail, ..
            }) => {
                assert!(detail.contains("longer than 4096 bytes"), "{detail}")
            }
            other => panic!("expected damage at line 2, got {:?}", other.err()),
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_complete_line_that_cannot_be_read_is_damage_even_the_last_one() {
        let dir = temp_dir("lastline");
        let path = dir.join("state.jsonl");
        let good = "{\"op\":\"sending\",\"id\":7,\"wood_type\":\"oak\",\"quantity\":2}\n";
        for last in [
            "garbage\n",
            "{\"op\":\"decided\",\"id\":7,\"wood_type\":\"oak\",\"quantity\":2,\"status\":\"bogus\"}\n",
            "{\"op\":\"decided\",\"id\":7,\"wood_type\":\"oak\",\"quantity\":2}\n",
            "{\"op\":\"sending\",\"id\":7,\"wood_ty\n",
            "\n",
        ] {
            fs::write(&path, format!("{good}{last}")).unwrap();
            match FileJournal::open(&path) {
                Err(JournalError::Corrupt { line: 2, .. }) => {}
                other => panic!("{last:?}: expected damage at line 2, got {:?}", other.err()),
            }
        }
        // Without its newline the same last line is torn, and ignored.
        fs::write(&path, format!("{good}garbage")).unwrap();
        assert_eq!(FileJournal::open(&path).unwrap().in_flight().len(), 1);
        // A sending record padded with spaces (room for its decision) reads as before.
        fs::write(&path, good.replace("}\n", "}          \n")).unwrap();
        assert_eq!(
            FileJournal::open(&path).unwrap().in_flight(),
            vec![(
                Order {
                    id: 7,
                    wood_type: WoodType::Oak,
                    quantity: 2
                },
                InFlight::Sent
            )]
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
