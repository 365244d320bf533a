//! Helpers shared by the state's tests: a fresh directory of one's own, and a FIFO.

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh, empty directory `om-{part}-{name}-{pid}` in the system's temporary one.
pub(crate) fn temp_dir(part: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("om-{part}-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A FIFO at `path`.
pub(crate) fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}
