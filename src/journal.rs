//! A durable journal of the orders in flight (`--state-file`): one JSON line per step,
//! written and `fsync`ed before the step it protects, so that a crash at any instant
//! leaves a record of what may have happened.
//!
//! - `sending`: a decrease is about to be sent (the stock may be taken from now on);
//! - `decided`: the decrease's outcome is known and the order's status is chosen
//!   (`ready`: stock taken; `blocked`: not taken; `unknown`: in doubt);
//! - `finished`: the status is set, or nothing was taken: the order is forgotten.
//!
//! On open, the journal is replayed (a torn last line, as a crash leaves it, is ignored
//! with a warning; damage anywhere else refuses to start) and compacted: rewritten
//! through a temporary file and a rename, keeping only unfinished orders. A lock file
//! beside it keeps a second worker away.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::orders::{Order, OrderStatus, WoodType};
use crate::process::{InFlight, Journal};

/// Appended lines allowed beyond twice the live orders before a compaction.
const COMPACT_SLACK: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Sending,
    Decided,
    Finished,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    op: Op,
    id: u64,
    wood_type: String,
    quantity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

impl Record {
    fn new(op: Op, order: &Order, status: Option<OrderStatus>) -> Record {
        Record {
            op,
            id: order.id,
            wood_type: order.wood_type.as_str().to_string(),
            quantity: order.quantity,
            status: status.map(|s| s.as_str().to_string()),
        }
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

/// Why a journal cannot be used; the worker must not start then.
#[derive(Debug)]
pub enum JournalError {
    /// Another process holds the lock.
    Locked(PathBuf),
    /// A line other than the last cannot be read: refusing is safer than guessing.
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Locked(p) => {
                write!(f, "state file {} is in use by another worker", p.display())
            }
            JournalError::Corrupt { path, line, detail } => {
                write!(
                    f,
                    "state file {} is damaged at line {line} ({detail}); move it aside after checking the orders it names",
                    path.display()
                )
            }
            JournalError::Io { path, error } => write!(f, "state file {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for JournalError {}

/// The journal in a file.
pub struct FileJournal {
    path: PathBuf,
    file: File,
    live: BTreeMap<u64, (Order, InFlight)>,
    lines: usize,
    /// Held for the life of the process.
    _lock: File,
}

impl FileJournal {
    /// Locks, replays and compacts the journal at `path` (created if missing).
    pub fn open(path: &Path) -> Result<FileJournal, JournalError> {
        let io_err = |error| JournalError::Io {
            path: path.to_path_buf(),
            error,
        };
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(JournalError::Locked(path.to_path_buf())),
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let live = match fs::read(path) {
            Ok(bytes) => replay(path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err(e)),
        };
        let file = write_compacted(path, &live).map_err(io_err)?;
        Ok(FileJournal {
            path: path.to_path_buf(),
            file,
            lines: live.len(),
            live,
            _lock: lock,
        })
    }

    fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    fn compact_if_large(&mut self) -> io::Result<()> {
        if self.lines > 2 * self.live.len() + COMPACT_SLACK {
            self.file = write_compacted(&self.path, &self.live)?;
            self.lines = self.live.len();
        }
        Ok(())
    }
}

impl Journal for FileJournal {
    fn sending(&mut self, order: &Order) -> io::Result<()> {
        self.append(&Record::new(Op::Sending, order, None))?;
        self.live.insert(order.id, (*order, InFlight::Sent));
        Ok(())
    }

    fn decided(&mut self, order: &Order, status: OrderStatus) -> io::Result<()> {
        self.append(&Record::new(Op::Decided, order, Some(status)))?;
        self.live
            .insert(order.id, (*order, InFlight::Decided(status)));
        Ok(())
    }

    fn finished(&mut self, order: &Order) -> io::Result<()> {
        if self.live.remove(&order.id).is_none() {
            return Ok(()); // never journaled (e.g. a simulated failure): nothing to close
        }
        self.append(&Record::new(Op::Finished, order, None))?;
        self.compact_if_large()
    }

    fn in_flight(&self) -> Vec<(Order, InFlight)> {
        self.live.values().copied().collect()
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Applies the journal's lines in order; the last line may be torn.
fn replay(path: &Path, bytes: &[u8]) -> Result<BTreeMap<u64, (Order, InFlight)>, JournalError> {
    let mut live = BTreeMap::new();
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // split leaves an empty piece after a final newline.
    let count = lines.len() - usize::from(bytes.ends_with(b"\n") || bytes.is_empty());
    for (i, line) in lines.iter().take(count).enumerate() {
        let parsed = serde_json::from_slice::<Record>(line)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                let order = r.order().ok_or("not a valid order")?;
                let status = match (&r.op, r.status.as_deref().map(OrderStatus::parse)) {
                    (Op::Decided, Some(Some(s))) => Some(s),
                    (Op::Decided, _) => return Err("decided without a valid status".into()),
                    _ => None,
                };
                Ok((r.op, order, status))
            });
        match parsed {
            Ok((Op::Sending, order, _)) => {
                live.insert(order.id, (order, InFlight::Sent));
            }
            Ok((Op::Decided, order, Some(status))) => {
                live.insert(order.id, (order, InFlight::Decided(status)));
            }
            Ok((_, order, _)) => {
                live.remove(&order.id);
            }
            Err(detail) if i + 1 == count => {
                log::warn!(
                    "state file {}: last record is torn (a crash while writing it?) and is ignored: {detail}",
                    path.display()
                );
            }
            Err(detail) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: i + 1,
                    detail,
                });
            }
        }
    }
    Ok(live)
}

/// Writes the live orders to a temporary file, syncs it, renames it over the journal,
/// syncs the directory, and returns the journal opened for appending.
fn write_compacted(path: &Path, live: &BTreeMap<u64, (Order, InFlight)>) -> io::Result<File> {
    let tmp = with_suffix(path, ".tmp");
    {
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for (order, state) in live.values() {
            let record = match state {
                InFlight::Sent => Record::new(Op::Sending, order, None),
                InFlight::Decided(s) => Record::new(Op::Decided, order, Some(*s)),
            };
            serde_json::to_writer(&mut out, &record).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64) -> Order {
        Order {
            id,
            wood_type: WoodType::Elm,
            quantity: 4,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("om-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
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
    fn a_second_journal_on_the_same_file_is_refused() {
        let dir = temp_dir("lock");
        let path = dir.join("state.jsonl");
        let _first = FileJournal::open(&path).unwrap();
        assert!(matches!(
            FileJournal::open(&path),
            Err(JournalError::Locked(_))
        ));
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
