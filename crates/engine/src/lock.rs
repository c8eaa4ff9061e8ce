//! Per-box lock files: two `up` (or `up` and `stop`) of one box on one machine
//! run one after the other, never interleaved. Across machines, `up` re-checks
//! by tag after launching and terminates the loser.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a waiting process retries the lock.
const RETRY: Duration = Duration::from_millis(200);

/// Held while a box is being changed; the OS releases it if the process dies.
#[derive(Debug)]
pub struct BoxLock {
    _file: File,
    path: PathBuf,
}

impl BoxLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock of `box_name` under `dir`, calling `on_wait` once if another
/// process holds it.
pub async fn lock_box(
    dir: &Path,
    owner: &str,
    box_name: &str,
    on_wait: &(dyn Fn() + Sync),
) -> std::io::Result<BoxLock> {
    std::fs::create_dir_all(dir)?;
    lock_file(dir.join(format!("{owner}.{box_name}.lock")), on_wait).await
}

/// Takes an exclusive lock on the file at `path` (creating it), calling
/// `on_wait` once if another process holds it.
pub async fn lock_file(path: PathBuf, on_wait: &(dyn Fn() + Sync)) -> std::io::Result<BoxLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(BoxLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => {
                if !told {
                    on_wait();
                    told = true;
                }
                tokio::time::sleep(RETRY).await;
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}
