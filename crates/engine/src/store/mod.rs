//! The state store: SQLite through sqlx (WAL, embedded append-only
//! migrations) by default, or PostgreSQL (`[daemon] database`) for several
//! daemons sharing the work. One set of queries serves both (through sqlx's
//! `Any` driver, with `$n` placeholders both dialects read); the schemas have
//! their own migrations (`migrations/sqlite`, `migrations/postgres`).
//! It holds launch intents (written before the launch call, closed when the
//! instance is seen gone), an append-only event log, and the daemons' leases.
//!
//! One file per family of tables: `intents`, `events` (with the
//! notification cursors and processed message ids), `boxes` (with stop
//! jobs and doomed instances), `pools`, `history` (seen instances,
//! prices, samples, pruning) and `leases` (daemons, leases, locks).
//!
//! What belongs to one owner (one installation: its boxes, pools, events,
//! leases, history) is read and written through an [`OwnerStore`],
//! `store.for_owner(owner)`; each file keeps those in an `impl OwnerStore`
//! block beside the `impl Store` of what is not an owner's (prices, the
//! database's clock and connections, dedup across owners).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spotkeeper_cloud::Market;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _, FromRow, Row};

pub use crate::config::DatabaseUrl;

mod boxes;
mod events;
mod history;
mod intents;
mod leases;
mod pools;
#[cfg(test)]
mod schemas;
#[cfg(test)]
mod tests;

pub use boxes::{ManagedBox, StopJob, StopStep};
pub use events::{Event, NotifyCursor};
pub use history::{PriceSample, SeenInstance};
pub use intents::{Intent, NewIntent, Outcome};
pub use leases::{DaemonRow, Lease, LiveConfig, WakeListener};
pub use pools::{PoolLaunch, PoolStatus};

/// A state-file failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the file (or database) failed.
    #[error("cannot open the state store {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("state file query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The daemon recording a step no longer holds the subject's lease
    /// (another daemon took it over): nothing was recorded.
    #[error("{0}")]
    Fenced(crate::fence::Fence),
}

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (or memory): one machine.
    Sqlite,
    /// A PostgreSQL server: several daemons and CLIs on several machines.
    Postgres,
}

/// The state store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// PostgreSQL: the connections that hold box locks (apart, so a wave of
    /// launches holding locks never starves the queries).
    locks: Option<AnyPool>,
    /// PostgreSQL: where it is, for the daemons' wake-up channel.
    url: Option<DatabaseUrl>,
    backend: Backend,
    /// PostgreSQL: how many connections it may open (recorded with the
    /// daemon, so the next one knows what the server has left).
    connections: Option<Connections>,
    /// One event sequencer at a time in this process (see
    /// [`OwnerStore::events_after`]).
    ordering: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The store as one owner (one installation) sees it: its boxes, pools,
/// events, leases and history, without `owner` in every call
/// ([`Store::for_owner`]). The rest of the store is there too (`Deref`).
#[derive(Debug, Clone, Copy)]
pub struct OwnerStore<'a> {
    store: &'a Store,
    owner: &'a str,
}

impl OwnerStore<'_> {
    /// Whose view this is.
    pub fn owner(&self) -> &str {
        self.owner
    }
}

impl std::ops::Deref for OwnerStore<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store
    }
}

/// How many connections a store may open to PostgreSQL (lazily: only what
/// is used is open). What a daemon needs is [`Connections::daemon`]; the
/// daemons sharing a server must fit in its `max_connections`
/// ([`Store::check_connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// For queries: short, shared by the passes, the tasks and the API.
    pub queries: u32,
    /// For locks: each box being changed holds one for as long as it is (a
    /// launch with its waits, a stop), a daemon one for its id.
    pub locks: u32,
    /// For the daemons' wake-up channel (a daemon's `LISTEN`).
    pub listener: u32,
}

/// Connections for queries a store opens at most.
pub const QUERY_CONNECTIONS: u32 = 16;

impl Connections {
    /// A daemon running up to `max_tasks` tasks at once: a lock connection
    /// for each task (a wave of `max_tasks` warnings launches at once, none
    /// waits for another's ready check), one held for the daemon's id and
    /// one for a lock being tried; the queries; the listener. In all
    /// `max_tasks + 19`.
    pub fn daemon(max_tasks: usize) -> Self {
        Self {
            queries: QUERY_CONNECTIONS,
            locks: u32::try_from(max_tasks)
                .unwrap_or(u32::MAX)
                .saturating_add(2),
            listener: 1,
        }
    }

    /// All of them.
    pub fn total(self) -> u32 {
        self.queries
            .saturating_add(self.locks)
            .saturating_add(self.listener)
    }
}

impl Default for Connections {
    /// A command of the CLI: it changes a box or a few at a time.
    fn default() -> Self {
        Self {
            queries: QUERY_CONNECTIONS,
            locks: 8,
            listener: 0,
        }
    }
}

/// What the PostgreSQL server allows and what the daemons sharing it may
/// open ([`Store::check_connections`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// The server's `max_connections`.
    pub max_connections: i64,
    /// Of those, kept for superusers (`superuser_reserved_connections`,
    /// and `reserved_connections` from PostgreSQL 16).
    pub reserved: i64,
    /// What this store may open.
    pub mine: i64,
    /// What the other live daemons on the database may open, and how many
    /// they are.
    pub others: i64,
    /// The other live daemons.
    pub other_daemons: i64,
}

impl ConnectionBudget {
    /// Whether they all fit.
    pub fn fits(&self) -> bool {
        self.mine + self.others <= self.max_connections - self.reserved
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

/// Seconds since the epoch at `t` (0 before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How long a SQLite connection waits for another process's write lock.
const SQLITE_BUSY_MS: u32 = 15_000;

/// A `sqlite://` URL for the file at `path`, read-write and created if
/// missing (the path percent-encoded: `?` and `#` are file name characters).
fn sqlite_url(path: &Path) -> Result<String, sqlx::Error> {
    let text = path.to_str().ok_or_else(|| {
        sqlx::Error::Configuration(format!("{} is not UTF-8", path.display()).into())
    })?;
    let mut url = String::from("sqlite://");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

/// An error that might quote the URL, with its password taken out.
fn redact(e: sqlx::Error, url: &DatabaseUrl) -> sqlx::Error {
    match url.password() {
        Some(p) if !p.is_empty() && e.to_string().contains(p) => {
            sqlx::Error::Configuration(e.to_string().replace(p, "***").into())
        }
        _ => e,
    }
}

/// Milliseconds since the epoch, now (this host's clock: a record's time).
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// What owner `owner` has in the store: its boxes, pools, events and
    /// leases.
    pub fn for_owner<'a>(&'a self, owner: &'a str) -> OwnerStore<'a> {
        OwnerStore { store: self, owner }
    }

    /// Opens (creating it and its directory if needed) the state file at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            // The state holds the API token file and what the boxes are:
            // this user's alone.
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(sqlx::Error::Io(e)))?;
        }
        // sqlx's SQLite migrator takes no lock: two processes opening a new
        // file at once would both create the tables. Migrate one at a time.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let _migrating = crate::lock::lock_file(lock_path.into(), &|| {})
            .await
            .map_err(|e| err(sqlx::Error::Io(e)))?;
        let url = sqlite_url(path).map_err(err)?;
        let pool = Self::sqlite_pool(&url, 4).await.map_err(err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| err(e.into()))?;
        // SQLite creates its files with the umask's mode: readable by all.
        use std::os::unix::fs::PermissionsExt as _;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            if let Ok(meta) = std::fs::metadata(&p)
                && meta.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(sqlx::Error::Io(e)))?;
            }
        }
        Ok(Self {
            pool,
            locks: None,
            url: None,
            backend: Backend::Sqlite,
            connections: None,
            ordering: Default::default(),
        })
    }

    /// A pool of SQLite connections in WAL mode that wait for a busy file.
    async fn sqlite_pool(url: &str, connections: u32) -> Result<AnyPool, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.parse()?;
        AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Another spotkeeper process (the daemon, a second CLI) may
                    // hold the write lock for a moment; wait rather than fail.
                    conn.execute(&*format!(
                        "PRAGMA busy_timeout = {SQLITE_BUSY_MS}; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON"
                    ))
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
    }

    /// Connects to the PostgreSQL database at `url` and brings its schema
    /// up to date (sqlx's migrator holds an advisory lock while it does, so
    /// daemons starting together migrate once).
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        Self::connect_with(url, Connections::default()).await
    }

    /// [`Store::connect`], opening at most `connections`.
    pub async fn connect_with(
        url: &DatabaseUrl,
        connections: Connections,
    ) -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: url.to_string(),
            source,
        };
        sqlx::any::install_default_drivers();
        let options: AnyConnectOptions = url.expose().parse().map_err(err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(connections.queries.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| err(redact(e, url)))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| err(redact(e.into(), url)))?;
        let locks = AnyPoolOptions::new()
            .max_connections(connections.locks.max(1))
            .min_connections(0)
            .idle_timeout(Duration::from_secs(300))
            // Waiting for a lock connection is waiting for the lock.
            .acquire_timeout(Duration::from_secs(3600))
            .connect_lazy_with(url.expose().parse().map_err(err)?);
        Ok(Self {
            pool,
            locks: Some(locks),
            url: Some(url.clone()),
            backend: Backend::Postgres,
            connections: Some(connections),
            ordering: Default::default(),
        })
    }

    /// An in-memory store, for tests.
    pub async fn memory() -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: ":memory:".into(),
            source,
        };
        // One connection: every connection to :memory: is a separate database.
        let pool = Self::sqlite_pool("sqlite::memory:", 1).await.map_err(err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| err(e.into()))?;
        Ok(Self {
            pool,
            locks: None,
            url: None,
            backend: Backend::Sqlite,
            connections: None,
            ordering: Default::default(),
        })
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}
