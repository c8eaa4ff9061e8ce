//! Per-box locks: two `up` (or `up` and `stop`, or a daemon's replacement) of
//! one box run one after the other, never interleaved. On a SQLite state they
//! are lock files (one machine); on PostgreSQL, advisory locks held by a
//! connection of their own (every machine sharing the database; see
//! [`crate::store::OwnerStore::lock_box`]). Beyond that, `up` re-checks by tag
//! after launching and terminates the loser.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a waiting process retries the lock.
const RETRY: Duration = Duration::from_millis(200);

/// Held while a box is being changed; released when dropped, and by the
/// OS (a file) or the database (a closed connection) if the process dies.
#[derive(Debug)]
pub struct BoxLock {
    _held: Held,
}

#[derive(Debug)]
enum Held {
    File(#[allow(dead_code)] File),
    /// A PostgreSQL session advisory lock: the connection holding it and
    /// the statement that releases it.
    Database(Option<(sqlx::pool::PoolConnection<sqlx::Any>, String, i64)>),
}

impl BoxLock {
    /// The advisory lock `key` (its 64-bit id) held by the pooled
    /// connection `conn`. Dropped: released, and the connection goes back
    /// to its pool; if that fails, the connection is closed (which releases
    /// it too).
    pub fn in_database(
        conn: sqlx::pool::PoolConnection<sqlx::Any>,
        unlock: String,
        key: i64,
    ) -> Self {
        Self {
            _held: Held::Database(Some((conn, unlock, key))),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Held::Database(held) = self else { return };
        let Some((mut conn, unlock, key)) = held.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let done: Result<bool, _> = sqlx::query_scalar(&unlock)
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await;
                    if !matches!(done, Ok(true)) {
                        // Not released: closing the session releases it.
                        drop(conn.detach());
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
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
            Ok(()) => {
                return Ok(BoxLock {
                    _held: Held::File(file),
                });
            }
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
