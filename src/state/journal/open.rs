//! Opening a state file: its lock's and its temporary file's names beside it, the
//! checks on all three, the two locks, the replay and the first compaction; and reading
//! one without locking or writing anything ([`read_only`], [`peek`]).

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::compact::write_compacted;
use super::owner::Owner;
use super::record::replay;
use super::{FileJournal, JournalError, MAX_STATE_FILE_BYTES, io_at};
use crate::services::orders::Order;
use crate::state::in_flight::InFlight;

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
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
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
pub(super) fn try_lock(file: &File) -> Result<(), Option<io::Error>> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(None),
        Err(TryLockError::Error(e)) => Err(Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::in_flight::Journal;
    use crate::state::journal::testing::{order, temp_dir, unusable};

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

    use crate::state::testing::mkfifo;

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
}
