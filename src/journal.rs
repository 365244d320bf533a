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
//! through a temporary file and a rename, keeping only unfinished orders.
//!
//! A second worker is kept away by two locks (`flock`): on the state file itself, so
//! that another name for it (a hard link, a symbolic link to its directory) is refused
//! too, taken on each new file before it is renamed into place; and on `PATH.lock`
//! beside it. The state file, its lock and its temporary file are regular files or do
//! not exist (see [`crate::files`]), and a state file with a second hard link is
//! refused at start.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::orders::{Order, OrderStatus, WoodType};
use crate::process::{InFlight, Journal};

/// Appended lines allowed beyond twice the live orders before a compaction.
const COMPACT_SLACK: usize = 256;

/// The largest state file read at start (a compacted file holds about 100 bytes per
/// order in flight, so this is hundreds of thousands of them): a larger one is refused
/// rather than read into memory.
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024 * 1024;

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
            JournalError::Unusable { path, detail } => {
                write!(f, "state file {}: {detail}", path.display())
            }
            JournalError::Io { path, error } => write!(f, "state file {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for JournalError {}

/// The journal in a file.
pub struct FileJournal {
    path: PathBuf,
    tmp: PathBuf,
    /// The state file, locked; written at `end` (the worker is its only writer).
    file: File,
    end: u64,
    live: BTreeMap<u64, (Order, InFlight)>,
    lines: usize,
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

impl FileJournal {
    /// Locks, replays and compacts the journal at `path` (created if missing).
    pub fn open(path: &Path) -> Result<FileJournal, JournalError> {
        let [_, lock_path, tmp] = companion_paths(path);
        let io_at = |at: &Path| {
            let at = at.to_path_buf();
            move |error: io::Error| match error.kind() {
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                    JournalError::Unusable {
                        path: at.clone(),
                        detail: error.to_string(),
                    }
                }
                _ => JournalError::Io {
                    path: at.clone(),
                    error,
                },
            }
        };
        let locked = || JournalError::Locked(path.to_path_buf());
        for at in [path, &lock_path, &tmp] {
            crate::files::check_regular_or_absent(at).map_err(io_at(at))?;
        }
        let lock = crate::files::open_regular(
            &lock_path,
            OpenOptions::new().create(true).truncate(false).write(true),
        )
        .map_err(io_at(&lock_path))?;
        try_lock(&lock).map_err(|e| e.map_or_else(locked, io_at(&lock_path)))?;
        let file = crate::files::open_regular(
            path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true),
        )
        .map_err(io_at(path))?;
        let meta = file.metadata().map_err(io_at(path))?;
        let unusable = |detail: String| JournalError::Unusable {
            path: path.to_path_buf(),
            detail,
        };
        if lock.metadata().is_ok_and(|l| same_inode(&l, &meta)) {
            return Err(unusable(format!(
                "it is the same file as its lock {}",
                lock_path.display()
            )));
        }
        if meta.nlink() > 1 {
            return Err(unusable(format!(
                "it has {} hard links: through another name a second worker could use it; \
                 remove the other links",
                meta.nlink()
            )));
        }
        try_lock(&file).map_err(|e| e.map_or_else(locked, io_at(path)))?;
        // A worker that held the file a moment ago may have replaced it since: the path
        // must still name the file locked.
        match fs::symlink_metadata(path) {
            Ok(now) if same_inode(&now, &meta) => {}
            _ => return Err(locked()),
        }
        if meta.len() > MAX_STATE_FILE_BYTES {
            return Err(unusable(format!(
                "it holds {} bytes, more than the {} MiB a state file may hold; \
                 move it aside after checking the orders it names",
                meta.len(),
                MAX_STATE_FILE_BYTES / 1024 / 1024
            )));
        }
        let bytes = crate::files::read_capped(&file, MAX_STATE_FILE_BYTES).map_err(io_at(path))?;
        let live = replay(path, &bytes)?;
        // Only the holder of the lock writes the temporary file: one there is a crash's.
        crate::files::remove_stale(&tmp).map_err(io_at(&tmp))?;
        let (file, end) = write_compacted(path, &tmp, &live).map_err(io_at(path))?;
        Ok(FileJournal {
            path: path.to_path_buf(),
            tmp,
            file,
            end,
            lines: live.len(),
            live,
            retired: Vec::new(),
            _lock: lock,
        })
    }

    fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all_at(&line, self.end)?;
        self.file.sync_data()?;
        self.end += line.len() as u64;
        self.lines += 1;
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
        let (file, end) = write_compacted(&self.path, &self.tmp, &self.live)?;
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
        Ok(())
    }
}

fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
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

/// Writes the live orders to a new temporary file (created, never opened through a path
/// that exists), locks it, syncs it, renames it over the journal and syncs the
/// directory; returns it, for writing at its end, and that end.
fn write_compacted(
    path: &Path,
    tmp: &Path,
    live: &BTreeMap<u64, (Order, InFlight)>,
) -> io::Result<(File, u64)> {
    let file = crate::files::create_new(tmp)?;
    let written = (|| {
        // Locked before it takes the journal's place: a worker opening the path from
        // then on finds it locked.
        try_lock(&file).map_err(|e| {
            e.unwrap_or_else(|| io::Error::other("the new state file is locked by another process"))
        })?;
        let mut out = io::BufWriter::new(&file);
        for (order, state) in live.values() {
            let record = match state {
                InFlight::Sent => Record::new(Op::Sending, order, None),
                InFlight::Decided(s) => Record::new(Op::Decided, order, Some(*s)),
            };
            serde_json::to_writer(&mut out, &record).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
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
    Ok((file, end))
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
            Err(JournalError::Locked(_))
        ));
        drop(first);
        fs::remove_dir_all(dir).unwrap();
    }

    fn files_same(a: &Path, b: &Path) -> bool {
        crate::files::same_file(a, b)
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
            Err(JournalError::Locked(_))
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
        assert!(unusable(FileJournal::open(&path)).contains("64 MiB"));
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
