//! The files the worker creates and reads (the state file, its lock, the heartbeat)
//! cannot be aimed elsewhere: they are regular files or do not exist yet, opened
//! without following a symbolic link and without blocking (a FIFO put in their place
//! is refused, never waited on); temporary files are created new, never opened
//! through a path that already exists; reads are capped.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a path is, when it exists and is not a regular file.
fn kind(meta: &fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_symlink() {
        Some("a symbolic link (give the path of the file itself)")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    }
}

fn not_regular(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {what}, not a regular file"),
    )
}

/// Ok when `path` is a regular file or does not exist; a symbolic link is refused
/// (looked at with `lstat`, so nothing is opened).
pub fn check_regular_or_absent(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => match kind(&meta) {
            None => Ok(()),
            Some(what) => Err(not_regular(what)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` with `options`, refusing a symbolic link in its last component
/// (`O_NOFOLLOW`) and never blocking on a FIFO (`O_NONBLOCK`), then checks with
/// `fstat` that what was opened is a regular file: what the path named a moment before
/// may have been replaced.
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular("a symbolic link (give the path of the file itself)"),
            _ => e,
        })?;
    match kind(&file.metadata()?) {
        None => Ok(file),
        Some(what) => Err(not_regular(what)),
    }
}

/// Creates `path` anew for reading and writing (`O_CREAT | O_EXCL | O_NOFOLLOW`): it
/// fails if anything exists there, a symbolic link included.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Removes a temporary file a crash left behind; only a regular file is removed, and
/// anything else there is an error.
pub fn remove_stale(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => match kind(&meta) {
            None => fs::remove_file(path),
            Some(what) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is in the way: it is {what}, not a temporary file of the worker",
                    path.display()
                ),
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads `file` whole if it holds at most `cap` bytes (by `fstat`, then by what was
/// read); a longer file is an error.
pub fn read_capped(mut file: &File, cap: u64) -> io::Result<Vec<u8>> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {cap} bytes"),
        )
    };
    if file.metadata()?.len() > cap {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Reads a regular file of at most `cap` bytes: opened without blocking (a FIFO is
/// refused by `fstat`, never waited on), symbolic links followed.
pub fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    match kind(&file.metadata()?) {
        None => read_capped(&file, cap),
        Some(what) => Err(not_regular(what)),
    }
}

/// True when `a` and `b` name the same file: the same device and inode when both
/// exist (hard links and symbolic links included), else the same path once their
/// directories are resolved.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => resolved(a) == resolved(b),
    }
}

/// The path with its directory resolved (symbolic links, `..`), or as given when the
/// directory does not exist either.
fn resolved(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match (fs::canonicalize(dir), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// The processes holding a lock on the file at `path`, as `/proc/locks` lists them
/// (the kernel's table of every lock, `flock` ones included): their pids in this
/// process's PID namespace, where 0 stands for one this process cannot see (another
/// container sharing the volume). Waiters (`->` lines) are left out.
pub fn lock_holders(path: &Path) -> io::Result<Vec<u32>> {
    let meta = fs::metadata(path)?;
    let text = fs::read_to_string("/proc/locks")?;
    let device = (libc::major(meta.dev()), libc::minor(meta.dev()));
    Ok(holders_in(&text, device, meta.ino()))
}

/// The pids `/proc/locks`' `text` gives for locks on inode `ino` of the device
/// `(major, minor)`: lines such as `1: FLOCK  ADVISORY  WRITE 4242 08:01:1837 0 EOF`
/// (device numbers in hexadecimal, the inode in decimal; an OFD lock's pid is -1).
fn holders_in(text: &str, device: (u32, u32), ino: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(kind), Some(_), Some(_), Some(pid), Some(at)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if kind == "->" {
            continue;
        }
        let mut parts = at.split(':');
        let (Some(major), Some(minor), Some(inode)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let same = u32::from_str_radix(major, 16).ok() == Some(device.0)
            && u32::from_str_radix(minor, 16).ok() == Some(device.1)
            && inode.parse::<u64>().ok() == Some(ino);
        if let (true, Ok(pid)) = (same, pid.parse::<u32>())
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    use crate::state::testing::mkfifo;

    fn temp_dir(name: &str) -> PathBuf {
        crate::state::testing::temp_dir("files", name)
    }

    #[test]
    fn only_regular_files_or_nothing_pass() {
        let dir = temp_dir("kinds");
        let (file, fifo, link) = (dir.join("f"), dir.join("p"), dir.join("l"));
        fs::write(&file, "x").unwrap();
        mkfifo(&fifo);
        symlink(&file, &link).unwrap();
        assert!(check_regular_or_absent(&file).is_ok());
        assert!(check_regular_or_absent(&dir.join("none")).is_ok());
        for (path, what) in [
            (&dir, "directory"),
            (&fifo, "FIFO"),
            (&link, "symbolic link"),
            (&PathBuf::from("/dev/null"), "device"),
        ] {
            let e = check_regular_or_absent(path).unwrap_err();
            assert!(e.to_string().contains(what), "{path:?}: {e}");
        }
        // Opening refuses the same, without blocking on the FIFO.
        let rw = || {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            o
        };
        assert!(open_regular(&file, &mut rw()).is_ok());
        for path in [&fifo, &link, &PathBuf::from("/dev/null")] {
            assert!(open_regular(path, &mut rw()).is_err(), "{path:?}");
        }
        assert!(read_regular(&fifo, 10).is_err());
        assert!(read_regular(&dir, 10).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_file_is_never_one_that_exists() {
        let dir = temp_dir("new");
        let (target, link) = (dir.join("target"), dir.join("tmp"));
        fs::write(&target, "keep").unwrap();
        symlink(&target, &link).unwrap();
        assert!(create_new(&link).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(remove_stale(&link).is_err(), "a link is not removed");
        assert!(remove_stale(&dir.join("none")).is_ok());
        assert!(remove_stale(&target).is_ok());
        assert!(!target.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_are_capped() {
        let dir = temp_dir("cap");
        let file = dir.join("f");
        fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap().len(), 10);
        assert!(read_regular(&file, 9).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_same_file_is_found_through_links_and_paths() {
        let dir = temp_dir("same");
        let (a, hard, soft) = (dir.join("a"), dir.join("hard"), dir.join("soft"));
        fs::write(&a, "x").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::hard_link(&a, &hard).unwrap();
        symlink(&a, &soft).unwrap();
        assert!(same_file(&a, &hard));
        assert!(same_file(&a, &soft));
        assert!(same_file(&a, &dir.join("sub/../a")));
        assert!(!same_file(&a, &dir.join("b")));
        // Neither exists yet: the resolved paths decide.
        symlink(dir.join("sub"), dir.join("alias")).unwrap();
        assert!(same_file(&dir.join("sub/new"), &dir.join("alias/new")));
        assert!(!same_file(&dir.join("sub/new"), &dir.join("sub/other")));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_holders_are_read_from_proc_locks() {
        let text = "\
1: POSIX  ADVISORY  WRITE 77 fd:00:1837 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 08:1f:1837 0 EOF
2: -> FLOCK  ADVISORY  WRITE 5151 08:1f:1837 0 EOF
3: OFDLCK ADVISORY  READ  -1 08:1f:1837 0 EOF
4: FLOCK  ADVISORY  WRITE 0 08:1f:1837 0 EOF
5: FLOCK  ADVISORY  WRITE 99 08:1f:18370 0 EOF
";
        assert_eq!(holders_in(text, (8, 31), 1837), [4242, 0]);
        assert_eq!(holders_in(text, (253, 0), 1837), [77]);
        assert!(holders_in(text, (8, 31), 1).is_empty());
        assert!(holders_in("garbage\n\n1: FLOCK", (8, 31), 1837).is_empty());
    }

    #[test]
    fn a_lock_this_process_takes_is_found_with_its_pid() {
        let dir = std::env::temp_dir().join(format!("om-files-locks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("locked");
        let file = File::create(&path).unwrap();
        assert!(!lock_holders(&path).unwrap().contains(&std::process::id()));
        file.try_lock().unwrap();
        assert!(lock_holders(&path).unwrap().contains(&std::process::id()));
        drop(file);
        fs::remove_dir_all(dir).unwrap();
    }
}
