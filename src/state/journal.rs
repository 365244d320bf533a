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

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::services::orders::{Order, OrderStatus, WoodType};
use crate::state::in_flight::{InFlight, Journal, trace_ref};

/// Appended lines allowed beyond twice the live orders before a compaction.
const COMPACT_SLACK: usize = 256;

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

/// The longest line read from a state file (a record is about 150 bytes): a longer one
/// is damage, and is not read whole into memory.
const MAX_LINE_BYTES: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Sending,
    Decided,
    Finished,
    Quarantined,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
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
    fn new(op: Op, order: &Order, status: Option<OrderStatus>) -> Record {
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
    fn quarantine(order: &Order, status: Option<OrderStatus>, times: u32, until: u64) -> Record {
        Record {
            times: Some(times),
            until: Some(until),
            ..Record::new(Op::Quarantined, order, status)
        }
    }

    fn with_trace(mut self, trace: Option<&String>) -> Record {
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

/// What a state file belongs to: both services' base URLs (credentials left out) and
/// the shard. Written as the file's first line; a worker for other services or another
/// shard refuses the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub orders: String,
    pub stocks: String,
    pub shard: Option<String>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "orders {}, stocks {}", self.orders, self.stocks)?;
        match &self.shard {
            Some(shard) => write!(f, ", shard {shard}"),
            None => f.write_str(", no shard"),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OwnerOp {
    Owner,
}

/// The owner's line (its fields spelled out: serde's `flatten` costs kilobytes of code).
#[derive(Debug, Serialize, Deserialize)]
struct OwnerLine {
    op: OwnerOp,
    orders: String,
    stocks: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
}

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

/// The state file's own path, its lock's and its temporary file's: none of them may be
/// another file the worker writes (the heartbeat).
pub fn companion_paths(path: &Path) -> [PathBuf; 3] {
    [
        path.to_path_buf(),
        with_suffix(path, ".lock"),
        with_suffix(path, ".tmp"),
    ]
}

/// The orders in flight in the journal at `path`, read without locking, creating or
/// rewriting anything (for `--dry-run`); none when the file does not exist.
pub fn read_only(path: &Path) -> Result<Vec<(Order, InFlight)>, JournalError> {
    crate::state::files::check_regular_or_absent(path).map_err(|e| io_at(path, e))?;
    let file = match crate::state::files::open_regular(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(path, e)),
    };
    let (live, _, _) = replay(path, &file)?;
    Ok(live.into_values().collect())
}

/// What the journal at `path` belongs to and how many orders it holds in flight, read
/// without locking or writing (a default state file's neighbours, at start).
pub fn peek(path: &Path) -> Result<(Option<Owner>, usize), JournalError> {
    crate::state::files::check_regular_or_absent(path).map_err(|e| io_at(path, e))?;
    let file = crate::state::files::open_regular(path, OpenOptions::new().read(true))
        .map_err(|e| io_at(path, e))?;
    if file.metadata().map_err(|e| io_at(path, e))?.len() > MAX_STATE_FILE_BYTES {
        return Err(JournalError::Unusable {
            path: path.to_path_buf(),
            detail: format!("it is larger than {MAX_STATE_FILE_BYTES} bytes"),
        });
    }
    let (live, _, owner) = replay(path, &file)?;
    Ok((owner, live.len()))
}

impl FileJournal {
    /// Locks, replays and compacts the journal at `path` (created if missing).
    pub fn open(path: &Path) -> Result<FileJournal, JournalError> {
        FileJournal::open_for(path, None)
    }

    /// [`FileJournal::open`] for the worker `owner` describes: a file written for
    /// another is refused ([`JournalError::Foreign`]); the file records its owner.
    pub fn open_for(path: &Path, owner: Option<&Owner>) -> Result<FileJournal, JournalError> {
        // Said in the words of the path given, not of the lock file beside it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(JournalError::Unusable {
                path: path.to_path_buf(),
                detail: format!(
                    "directory {} does not exist: create it (on a volume that outlives the run)",
                    dir.display()
                ),
            });
        }
        let [_, lock_path, tmp] = companion_paths(path);
        let locked = || JournalError::Locked(path.to_path_buf(), holder(&lock_path));
        for at in [path, &lock_path, &tmp] {
            crate::state::files::check_regular_or_absent(at).map_err(|e| io_at(at, e))?;
        }
        let lock = crate::state::files::open_regular(
            &lock_path,
            OpenOptions::new().create(true).truncate(false).write(true),
        )
        .map_err(|e| io_at(&lock_path, e))?;
        try_lock(&lock).map_err(|e| e.map_or_else(locked, |e| io_at(&lock_path, e)))?;
        // The holder's pid, for the message a second run prints; the lock works without it.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0));
        let file = crate::state::files::open_regular(
            path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true),
        )
        .map_err(|e| io_at(path, e))?;
        let meta = file.metadata().map_err(|e| io_at(path, e))?;
        if meta.nlink() > 1 {
            return Err(JournalError::Unusable {
                path: path.to_path_buf(),
                detail: format!(
                    "it has {} hard links: through another name a second worker could use it; \
                     remove the other links",
                    meta.nlink()
                ),
            });
        }
        try_lock(&file).map_err(|e| e.map_or_else(locked, |e| io_at(path, e)))?;
        // A worker that held the file a moment ago may have replaced it since: the path
        // must still name the file locked.
        match fs::symlink_metadata(path) {
            Ok(now) if same_inode(&now, &meta) => {}
            _ => return Err(locked()),
        }
        // Refused unread above the cap.
        if meta.len() > MAX_STATE_FILE_BYTES {
            return Err(JournalError::Unusable {
                path: path.to_path_buf(),
                detail: format!("it is larger than {MAX_STATE_FILE_BYTES} bytes"),
            });
        }
        let (live, traces, theirs) = replay(path, &file)?;
        if let (Some(theirs), Some(ours)) = (&theirs, owner)
            && theirs != ours
        {
            return Err(JournalError::Foreign {
                path: path.to_path_buf(),
                theirs: Box::new(theirs.clone()),
                ours: Box::new(ours.clone()),
            });
        }
        let owner = owner.cloned().or(theirs);
        // Only the holder of the lock writes the temporary file: one there is a crash's.
        crate::state::files::remove_stale(&tmp).map_err(|e| io_at(&tmp, e))?;
        let (file, end, slots) = write_compacted(path, &tmp, &live, &traces, owner.as_ref())
            .map_err(|e| io_at(path, e))?;
        Ok(FileJournal {
            written: 0,
            durable: 0,
            owner,
            path: path.to_path_buf(),
            tmp,
            file,
            end,
            lines: live.len(),
            live,
            traces,
            slots,
            stale: None,
            at_risk: Vec::new(),
            #[cfg(test)]
            disk_full: false,
            retired: Vec::new(),
            _lock: lock,
        })
    }

    /// Appends `line` (newline included) at the end and syncs it. On failure, what was
    /// written of it is cut off again; if even that fails, the file is stale.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        self.append_with(line, true)
    }

    /// [`FileJournal::append`]; without `sync`, the line rides on the next record's
    /// sync (a process that dies keeps it: the kernel holds it; only a crash of the
    /// machine before the next sync loses it).
    fn append_with(&mut self, line: &[u8], sync: bool) -> io::Result<()> {
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
    /// ([`Journal::decided_soon`]).
    fn decide(&mut self, order: &Order, status: OrderStatus, sync: bool) -> io::Result<()> {
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
    fn take_slot(&mut self, id: u64) -> Option<Slot> {
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

    /// Rewrites the file from memory when it is stale; an error leaves it stale.
    fn bring_up_to_date(&mut self) -> io::Result<()> {
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

    fn compact_if_large(&mut self) -> io::Result<()> {
        if self.lines > 2 * self.live.len() + COMPACT_SLACK {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with the live orders only.
    fn compact(&mut self) -> io::Result<()> {
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

fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// The process id written in a held `PATH.lock`, if it can be read.
fn holder(lock_path: &Path) -> Option<u32> {
    let text = crate::state::files::read_regular(lock_path, 64).ok()?;
    std::str::from_utf8(&text).ok()?.trim().parse().ok()
}

/// Takes the file's exclusive lock without waiting: `Err(None)` when another process
/// holds it.
fn try_lock(file: &File) -> Result<(), Option<io::Error>> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(None),
        Err(TryLockError::Error(e)) => Err(Some(e)),
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

/// A record as one line, without its newline.
fn record_line(record: &Record) -> io::Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(io::Error::other)
}

/// An order's `sending` line, padded with spaces (which JSON allows after a value) to
/// the length of its longest `decided` record, and that length (without the newline).
fn sending_line(order: &Order) -> io::Result<(Vec<u8>, usize)> {
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

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Applies the journal's lines in order, read from `file` one at a time (only the
/// orders in flight are kept); the last line may be torn (cut before its newline by a
/// crash).
fn replay(path: &Path, file: impl io::Read) -> Result<(Live, Traces, Option<Owner>), JournalError> {
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
type Live = BTreeMap<u64, (Order, InFlight)>;
/// The traces of decided orders in flight, by id.
type Traces = BTreeMap<u64, String>;

/// Writes the live orders to a new temporary file (created, never opened through a path
/// that exists), locks it, syncs it, renames it over the journal and syncs the
/// directory; returns it, for writing at its end, that end, and where its `sending`
/// records lie.
fn write_compacted(
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
    use super::*;

    fn order(id: u64) -> Order {
        Order {
            id,
            wood_type: WoodType::Elm,
            quantity: 4,
        }
    }

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
    fn a_second_journal_on_the_same_file_is_refused() {
        let dir = temp_dir("lock");
        let path = dir.join("state.jsonl");
        let _first = FileJournal::open(&path).unwrap();
        // The holder wrote its pid into the lock file; the refusal names it.
        let e = FileJournal::open(&path).err().expect("refused");
        assert!(
            matches!(e, JournalError::Locked(_, Some(pid)) if pid == std::process::id()),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "another run (pid {}) holds {}; nothing done",
                std::process::id(),
                path.display()
            )
        );
        fs::remove_dir_all(dir).unwrap();
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn unusable(result: Result<FileJournal, JournalError>) -> String {
        match result {
            Err(e @ JournalError::Unusable { .. }) => e.to_string(),
            Err(e) => panic!("expected Unusable, got {e}"),
            Ok(_) => panic!("expected Unusable, got a journal"),
        }
    }

    #[test]
    fn the_state_file_its_lock_and_its_temporary_file_are_regular_files_or_absent() {
        let dir = temp_dir("kinds");
        let path = dir.join("state.jsonl");
        let [_, lock, tmp] = companion_paths(&path);
        for at in [&path, &lock, &tmp] {
            // A FIFO: refused at once, never opened (a read would block).
            mkfifo(at);
            let e = unusable(FileJournal::open(&path));
            assert!(
                e.contains("FIFO") && e.contains(&at.display().to_string()),
                "{e}"
            );
            fs::remove_file(at).unwrap();
            fs::create_dir(at).unwrap();
            assert!(unusable(FileJournal::open(&path)).contains("directory"));
            fs::remove_dir(at).unwrap();
            // A symbolic link, even to a regular file: never written through.
            let target = dir.join("target");
            fs::write(&target, "keep").unwrap();
            std::os::unix::fs::symlink(&target, at).unwrap();
            assert!(unusable(FileJournal::open(&path)).contains("symbolic link"));
            assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
            fs::remove_file(at).unwrap();
        }
        // A stale temporary file (a crash during a compaction) is removed.
        fs::write(&tmp, "half a compaction").unwrap();
        let mut j = FileJournal::open(&path).unwrap();
        j.sending(&order(1)).unwrap();
        assert!(!tmp.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hard_link_to_the_state_file_does_not_let_a_second_worker_in() {
        let dir = temp_dir("hardlink");
        let path = dir.join("state.jsonl");
        let other = dir.join("other.jsonl");
        // A second name that exists before the start: refused by both names.
        fs::write(&path, "").unwrap();
        fs::hard_link(&path, &other).unwrap();
        assert!(unusable(FileJournal::open(&path)).contains("2 hard links"));
        assert!(unusable(FileJournal::open(&other)).contains("2 hard links"));
        fs::remove_file(&other).unwrap();
        // A second name made while a worker runs: refused for its links, and once the
        // first worker has replaced its file by a compaction (the old one is then
        // reached by that name only, with one link, and its own lock file differs),
        // by the lock on the file itself, which the first worker keeps.
        let mut first = FileJournal::open(&path).unwrap();
        fs::hard_link(&path, &other).unwrap();
        assert!(unusable(FileJournal::open(&other)).contains("2 hard links"));
        first.sending(&order(1)).unwrap();
        first.compact().unwrap();
        assert!(!files_same(&path, &other));
        assert!(matches!(
            FileJournal::open(&other),
            Err(JournalError::Locked(..))
        ));
        drop(first);
        fs::remove_dir_all(dir).unwrap();
    }

    fn files_same(a: &Path, b: &Path) -> bool {
        crate::state::files::same_file(a, b)
    }

    #[test]
    fn a_second_worker_through_another_path_to_the_directory_is_refused() {
        let dir = temp_dir("dirlink");
        let alias = dir.with_extension("alias");
        let _ = fs::remove_file(&alias);
        std::os::unix::fs::symlink(&dir, &alias).unwrap();
        let _first = FileJournal::open(&dir.join("state.jsonl")).unwrap();
        assert!(matches!(
            FileJournal::open(&alias.join("state.jsonl")),
            Err(JournalError::Locked(..))
        ));
        fs::remove_file(alias).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_state_file_over_the_cap_is_refused_unread() {
        let dir = temp_dir("large");
        let path = dir.join("state.jsonl");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_STATE_FILE_BYTES + 1).unwrap(); // sparse: no disk used
        drop(file);
        let e = unusable(FileJournal::open(&path));
        assert!(e.contains("larger than 67108864 bytes"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_cap_on_orders_in_flight_is_four_times_the_pending_cap() {
        assert_eq!(MAX_IN_FLIGHT, 4 * crate::cycle::worker::PENDING_CAP);
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
