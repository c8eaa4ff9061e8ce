//! The state store: SQLite through sqlx (WAL, embedded append-only
//! migrations) by default, or PostgreSQL (`[daemon] database`) for several
//! daemons sharing the work. One set of queries serves both (through sqlx's
//! `Any` driver, with `$n` placeholders both dialects read); the schemas have
//! their own migrations (`migrations/sqlite`, `migrations/postgres`).
//! It holds launch intents (written before the launch call, closed when the
//! instance is seen gone), an append-only event log, and the daemons' leases.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spotkeeper_cloud::Market;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _, FromRow, Row};

pub use crate::config::DatabaseUrl;

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

/// A launch intent: the plan for one launch, recorded before the call.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Intent {
    /// Row id.
    pub id: i64,
    /// Owner tag value.
    pub owner: String,
    /// Box name.
    #[sqlx(rename = "box")]
    pub box_name: String,
    /// Launch generation of the box: a new one only after the previous instance is gone.
    pub generation: i64,
    /// The ClientToken used for the launch.
    pub token: String,
    /// Spot or on-demand.
    #[sqlx(try_from = "String")]
    pub market: Market,
    /// Chosen type.
    pub instance_type: String,
    /// Chosen zone.
    pub zone: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// The instance the launch returned, once known.
    pub instance_id: Option<String>,
}

/// A launch about to be made, as [`Store::create_intent`] records it.
#[derive(Debug, Clone, Copy)]
pub struct NewIntent<'a> {
    /// Owner tag value.
    pub owner: &'a str,
    /// Box name.
    pub box_name: &'a str,
    /// Launch generation of the box.
    pub generation: i64,
    /// The ClientToken of the launch.
    pub token: &'a str,
    /// Spot or on-demand.
    pub market: Market,
    /// Chosen type.
    pub instance_type: &'a str,
    /// Chosen zone.
    pub zone: Option<&'a str>,
}

/// How a box's launch intent ended (its `outcome` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its instance is gone.
    Gone,
    /// A later run planned another offering.
    Abandoned,
    /// AWS had no capacity for it.
    NoCapacity,
    /// AWS refused the launch.
    Failed,
    /// Another launcher's instance was kept; this one was terminated.
    LostRace,
    /// The box was stopped.
    Stopped,
}

impl Outcome {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Gone => "gone",
            Outcome::Abandoned => "abandoned",
            Outcome::NoCapacity => "no-capacity",
            Outcome::Failed => "failed",
            Outcome::LostRace => "lost-race",
            Outcome::Stopped => "stopped",
        }
    }
}

/// A row of the event log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Event {
    /// Row id (increasing).
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Box, if the event concerns one.
    #[sqlx(rename = "box")]
    pub box_name: Option<String>,
    /// Worker pool, if the event concerns one.
    pub pool: Option<String>,
    /// Short machine-readable kind, e.g. `launch`.
    pub kind: String,
    /// What happened and why.
    pub message: String,
}

/// How far a notification sink has been told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct NotifyCursor {
    /// The place ([`Store::events_after`]) of the last event the receiver
    /// took (or skipped as not wanted). For events recorded before places
    /// existed, the place is the id.
    pub last_event: i64,
    /// Failed attempts at the next event.
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// A box the daemon keeps alive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ManagedBox {
    /// Box name.
    pub name: String,
    /// `up` (spec in the config file) or `api` (spec stored here).
    pub source: String,
    /// The box's settings as JSON, for boxes registered through the API.
    pub spec: Option<String>,
    /// Unix seconds.
    pub registered_at: i64,
}

/// The columns `seen_instances` and `runs_since` select.
const SEEN_COLUMNS: &str = "instance_id, box, pool, instance_type, zone, market, state, first_seen, last_seen, launched_at, ended_at";

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
    /// [`Store::events_after`]).
    ordering: std::sync::Arc<tokio::sync::Mutex<()>>,
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

/// The PostgreSQL advisory lock the event sequencers of every process take
/// ("spotkeep" in ASCII).
const ORDERING_LOCK: i64 = 0x7370_6f74_6b65_6570;

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

impl Store {
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

    /// The box's open intent (not yet closed), if any.
    pub async fn open_intent(
        &self,
        owner: &str,
        box_name: &str,
    ) -> Result<Option<Intent>, StoreError> {
        let row = sqlx::query(
            "SELECT id, owner, box, generation, token, market, instance_type, zone, created_at, instance_id
             FROM intents WHERE owner = $1 AND box = $2 AND closed_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(owner)
        .bind(box_name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(Intent::from_row).transpose()?)
    }

    /// The next launch generation of a box (one more than any recorded).
    pub async fn next_generation(&self, owner: &str, box_name: &str) -> Result<i64, StoreError> {
        let max: Option<i64> =
            sqlx::query_scalar("SELECT MAX(generation) FROM intents WHERE owner = $1 AND box = $2")
                .bind(owner)
                .bind(box_name)
                .fetch_one(&self.pool)
                .await?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Records a new open intent. Within a daemon's task (a fence in
    /// scope), the same transaction checks that the daemon still holds the
    /// box's lease at the generation it planned under: a daemon that lost
    /// it records no launch (and so makes none).
    pub async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, StoreError> {
        let created_at = unix_now();
        let mut tx = self.pool.begin().await?;
        // The insert first: on SQLite the transaction then holds the write
        // lock from its first statement (a read first could not upgrade).
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO intents (owner, box, generation, token, market, instance_type, zone, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(new.owner)
        .bind(new.box_name)
        .bind(new.generation)
        .bind(new.token)
        .bind(new.market.as_str())
        .bind(new.instance_type)
        .bind(new.zone)
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(fence) = crate::fence::current()
            && !self.holds_lease_on(&mut tx, &fence).await?
        {
            tx.rollback().await?;
            return Err(StoreError::Fenced(fence));
        }
        tx.commit().await?;
        Ok(Intent {
            id,
            owner: new.owner.to_owned(),
            box_name: new.box_name.to_owned(),
            generation: new.generation,
            token: new.token.to_owned(),
            market: new.market,
            instance_type: new.instance_type.to_owned(),
            zone: new.zone.map(str::to_owned),
            created_at,
            instance_id: None,
        })
    }

    /// Records the instance a launch returned.
    pub async fn set_intent_instance(
        &self,
        intent_id: i64,
        instance_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE intents SET instance_id = $1 WHERE id = $2")
            .bind(instance_id)
            .bind(intent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes an intent with a one-word outcome (`gone`, `failed`, `stopped`, `lost-race`).
    pub async fn close_intent(&self, intent_id: i64, outcome: Outcome) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE intents SET closed_at = $1, outcome = $2 WHERE id = $3 AND closed_at IS NULL",
        )
        .bind(unix_now())
        .bind(outcome.as_str())
        .bind(intent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes every open intent of a box.
    pub async fn close_box_intents(
        &self,
        owner: &str,
        box_name: &str,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE intents SET closed_at = $1, outcome = $2 WHERE owner = $3 AND box = $4 AND closed_at IS NULL")
            .bind(unix_now())
            .bind(outcome.as_str())
            .bind(owner)
            .bind(box_name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Appends to the event log.
    pub async fn record_event(
        &self,
        owner: &str,
        box_name: Option<&str>,
        kind: crate::event_kind::EventKind,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (at, owner, box, kind, message) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(unix_now())
        .bind(owner)
        .bind(box_name)
        .bind(kind.as_str())
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` events of the owner after place `after` in the
    /// delivery order, with their places, in that order. An event has a
    /// place once it is committed ([`Store::order_events`]): however late
    /// it commits, and whatever its writer's clock said, it comes after
    /// every place read before and is never stepped over.
    pub async fn events_after(
        &self,
        owner: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        self.order_events().await?;
        let rows = sqlx::query(
            "SELECT seq, id, at, box, pool, kind, message FROM events
             WHERE owner = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(owner)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("seq")?, Event::from_row(r)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Gives the committed events that have no place in the delivery order
    /// the next places, in id order. One sequencer at a time (a lock in
    /// this process; on PostgreSQL a transaction-level advisory lock for
    /// every process), so places become visible in increasing order: a
    /// reader that saw place n later sees only places above n. (Ids do not
    /// do that on PostgreSQL: a transaction holding a smaller id may commit
    /// after one holding a larger.)
    pub async fn order_events(&self) -> Result<(), StoreError> {
        let _one = self.ordering.lock().await;
        let mut tx = self.pool.begin().await?;
        match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(ORDERING_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            Backend::Sqlite => {
                // The first statement writes, so the transaction holds the
                // write lock from here on (one that read first could not
                // write once another process had committed).
                let claimed = sqlx::query(
                    "UPDATE events SET seq = NULL WHERE id = (SELECT MIN(id) FROM events WHERE seq IS NULL)",
                )
                .execute(&mut *tx)
                .await?;
                if claimed.rows_affected() == 0 {
                    return Ok(());
                }
            }
        }
        let base: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM events WHERE seq IS NULL ORDER BY id LIMIT 1000")
                .fetch_all(&mut *tx)
                .await?;
        for (n, id) in (1..).zip(&ids) {
            sqlx::query("UPDATE events SET seq = $1 WHERE id = $2")
                .bind(base + n)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Where a notification sink stands; a sink seen for the first time
    /// starts after the newest event (it is not sent the history).
    pub async fn notify_cursor(&self, owner: &str, sink: &str) -> Result<NotifyCursor, StoreError> {
        self.order_events().await?;
        sqlx::query(
            "INSERT INTO notify_cursors (owner, sink, last_event, attempts, updated_at)
             VALUES ($1, $2, (SELECT COALESCE(MAX(seq), 0) FROM events), 0, $3)
             ON CONFLICT (owner, sink) DO NOTHING",
        )
        .bind(owner)
        .bind(sink)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT last_event, attempts, last_error FROM notify_cursors WHERE owner = $1 AND sink = $2",
        )
        .bind(owner)
        .bind(sink)
        .fetch_one(&self.pool)
        .await?;
        Ok(NotifyCursor::from_row(&row)?)
    }

    /// The receiver took everything up to event `last_event`.
    pub async fn notify_delivered(
        &self,
        owner: &str,
        sink: &str,
        last_event: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notify_cursors SET last_event = $1, attempts = 0, last_error = NULL, updated_at = $2
             WHERE owner = $3 AND sink = $4",
        )
        .bind(last_event)
        .bind(unix_now())
        .bind(owner)
        .bind(sink)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An attempt failed: the cursor as it stands and why.
    pub async fn notify_failed(
        &self,
        owner: &str,
        sink: &str,
        cursor: &NotifyCursor,
        why: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notify_cursors SET last_event = $1, attempts = $2, last_error = $3, updated_at = $4
             WHERE owner = $5 AND sink = $6",
        )
        .bind(cursor.last_event)
        .bind(i64::from(cursor.attempts))
        .bind(why)
        .bind(unix_now())
        .bind(owner)
        .bind(sink)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every sink's cursor: (sink, cursor).
    pub async fn notify_cursors(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, NotifyCursor)>, StoreError> {
        let rows = sqlx::query(
            "SELECT sink, last_event, attempts, last_error FROM notify_cursors WHERE owner = $1 ORDER BY sink",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("sink")?, NotifyCursor::from_row(r)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// The newest `limit` events (of one box, if given), newest first.
    pub async fn events(
        &self,
        owner: &str,
        box_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(sqlx::query_as::<_, Event>(
            "SELECT id, at, box, pool, kind, message FROM events
             WHERE owner = $1 AND ($2 IS NULL OR box = $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(owner)
        .bind(box_name)
        .bind(box_name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A lock pool connection while a lock is being taken: if the taking is
/// cancelled (its future dropped mid-query), the session may get the lock
/// after all, so the connection is closed, never handed back to the pool.
struct Locking(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl Locking {
    fn get(&mut self) -> &mut sqlx::AnyConnection {
        self.0.as_mut().expect("taken only once")
    }

    fn take(mut self) -> sqlx::pool::PoolConnection<sqlx::Any> {
        self.0.take().expect("taken only once")
    }
}

impl Drop for Locking {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

/// The channel daemons wake each other on ([`Store::wake_daemons`]).
const WAKE_CHANNEL: &str = "spotkeeper_wake";

/// A daemon's end of the wake-up channel.
#[derive(Debug)]
pub struct WakeListener(sqlx::postgres::PgListener);

impl WakeListener {
    /// The next wake-up: (owner, box).
    pub async fn next(&mut self) -> Result<(String, String), StoreError> {
        loop {
            let n = self.0.recv().await?;
            if let Some((owner, b)) = n.payload().split_once('/') {
                return Ok((owner.to_owned(), b.to_owned()));
            }
        }
    }
}

/// Releases an advisory lock taken by [`Store::lock_box`].
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// The 64-bit advisory lock id of `key` (FNV-1a: the same on every machine
/// and every build).
fn lock_id(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

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

impl Store {
    /// Makes a box managed (or updates how it is).
    pub async fn register_box(
        &self,
        owner: &str,
        name: &str,
        source: &str,
        spec: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO managed_boxes (owner, name, source, spec, registered_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (owner, name) DO UPDATE SET source = excluded.source, spec = excluded.spec",
        )
        .bind(owner)
        .bind(name)
        .bind(source)
        .bind(spec)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes a box managed unless it already is (keeps how it was registered).
    pub async fn ensure_managed(
        &self,
        owner: &str,
        name: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO managed_boxes (owner, name, source, spec, registered_at) VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (owner, name) DO NOTHING")
            .bind(owner)
            .bind(name)
            .bind(source)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stops managing a box; returns whether it was managed. A box whose
    /// stop job is open stays managed (its stop ends that: the daemons run
    /// the jobs of the boxes they manage), in the same statement.
    pub async fn deregister_box(&self, owner: &str, name: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "DELETE FROM managed_boxes WHERE owner = $1 AND name = $2 AND NOT EXISTS
             (SELECT 1 FROM stop_jobs s WHERE s.owner = $1 AND s.box = $2 AND s.state <> 'done')",
        )
        .bind(owner)
        .bind(name)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Asks for box `name`'s stop: records a `pending` job unless one is
    /// open already (asking twice is one stop); returns the job.
    pub async fn request_stop(&self, owner: &str, name: &str) -> Result<StopJob, StoreError> {
        sqlx::query(
            "INSERT INTO stop_jobs (owner, box, requested_at, finished_at, state, steps, error)
             VALUES ($1, $2, $3, NULL, 'pending', '', NULL)
             ON CONFLICT (owner, box) DO UPDATE SET requested_at = excluded.requested_at,
                 finished_at = NULL, state = 'pending', steps = '', error = NULL
             WHERE stop_jobs.state = 'done'",
        )
        .bind(owner)
        .bind(name)
        .bind(unix_ms())
        .execute(&self.pool)
        .await?;
        self.stop_job(owner, name)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Box `name`'s stop job, open or the last one done.
    pub async fn stop_job(&self, owner: &str, name: &str) -> Result<Option<StopJob>, StoreError> {
        let row = sqlx::query(
            "SELECT box, state, requested_at, finished_at, steps, error FROM stop_jobs
             WHERE owner = $1 AND box = $2",
        )
        .bind(owner)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(stop_job_from_row).transpose()?)
    }

    /// The boxes whose stop is still to be finished.
    pub async fn open_stops(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT box FROM stop_jobs WHERE owner = $1 AND state <> 'done' ORDER BY box",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a step of box `name`'s stop (`stopping` from the first
    /// one). Within a daemon's task the same transaction checks its lease
    /// ([`crate::fence`]).
    pub async fn stop_step(
        &self,
        owner: &str,
        name: &str,
        step: &str,
        what: &str,
    ) -> Result<(), StoreError> {
        let line = format!(
            "{}\t{step}\t{}\n",
            unix_ms(),
            what.replace(['\t', '\n'], " ")
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE stop_jobs SET steps = steps || $3, state = 'stopping', error = NULL
             WHERE owner = $1 AND box = $2 AND state <> 'done'",
        )
        .bind(owner)
        .bind(name)
        .bind(line)
        .execute(&mut *tx)
        .await?;
        self.fenced_commit(tx).await
    }

    /// Box `name`'s stop failed this time (it is tried again).
    pub async fn stop_failed(&self, owner: &str, name: &str, why: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE stop_jobs SET state = 'failed', error = $3
             WHERE owner = $1 AND box = $2 AND state <> 'done'",
        )
        .bind(owner)
        .bind(name)
        .bind(why)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Box `name`'s stop is done: the box is no longer managed, in the same
    /// transaction.
    pub async fn stop_done(&self, owner: &str, name: &str) -> Result<(), StoreError> {
        let line = format!("{}\tdone\tthe box is no longer managed\n", unix_ms());
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE stop_jobs SET steps = steps || $3, state = 'done', finished_at = $4, error = NULL
             WHERE owner = $1 AND box = $2 AND state <> 'done'",
        )
        .bind(owner)
        .bind(name)
        .bind(line)
        .bind(unix_ms())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM managed_boxes WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.fenced_commit(tx).await
    }

    /// Commits `tx` if no fence is in scope or it still holds; rolls back
    /// (nothing recorded) otherwise.
    async fn fenced_commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        if let Some(fence) = crate::fence::current()
            && !self.holds_lease_on(&mut tx, &fence).await?
        {
            tx.rollback().await?;
            return Err(StoreError::Fenced(fence));
        }
        tx.commit().await?;
        Ok(())
    }

    /// The managed boxes, by name.
    pub async fn managed_boxes(&self, owner: &str) -> Result<Vec<ManagedBox>, StoreError> {
        Ok(sqlx::query_as::<_, ManagedBox>("SELECT name, source, spec, registered_at FROM managed_boxes WHERE owner = $1 ORDER BY name")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Whether this owner's event `id` was acted on already.
    pub async fn seen(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM processed_events WHERE owner = $1 AND event_id = $2",
        )
        .bind(owner)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Records that this owner's event `id` is being handled; `false` if it
    /// was already (a duplicate delivery).
    pub async fn first_delivery(
        &self,
        owner: &str,
        id: &str,
        kind: &str,
        instance: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("INSERT INTO processed_events (owner, event_id, at, kind, instance) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, event_id) DO NOTHING")
            .bind(owner)
            .bind(id)
            .bind(unix_now())
            .bind(kind)
            .bind(instance)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Forgets this owner's processed event ids, doomed instances, seen
    /// instances and events older than `before` (unix seconds); returns how
    /// many rows went. An event redelivered after that long is stale anyway.
    pub async fn prune(&self, owner: &str, before: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for sql in [
            "DELETE FROM processed_events WHERE owner = $1 AND at < $2",
            "DELETE FROM doomed_instances WHERE owner = $1 AND at < $2",
            "DELETE FROM instances_seen WHERE owner = $1 AND last_seen < $2",
            "DELETE FROM events WHERE owner = $1 AND at < $2",
            "DELETE FROM pool_samples WHERE owner = $1 AND at < $2",
        ] {
            n += sqlx::query(sql)
                .bind(owner)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        // Closed launches are history; each box keeps its newest intent,
        // whose generation the next launch's token counts on.
        for sql in [
            "DELETE FROM intents WHERE owner = $1 AND closed_at IS NOT NULL AND closed_at < $2
             AND generation < (SELECT MAX(i2.generation) FROM intents i2 WHERE i2.owner = intents.owner AND i2.box = intents.box)",
            "DELETE FROM pool_launches WHERE owner = $1 AND closed_at IS NOT NULL AND closed_at < $2",
        ] {
            n += sqlx::query(sql)
                .bind(owner)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        // Leases and daemons gone silent, stops long done (milliseconds).
        for sql in [
            "DELETE FROM leases WHERE owner = $1 AND expires_at < $2",
            "DELETE FROM daemons WHERE owner = $1 AND seen_at < $2",
            "DELETE FROM stop_jobs WHERE owner = $1 AND state = 'done' AND finished_at < $2",
        ] {
            n += sqlx::query(sql)
                .bind(owner)
                .bind(before.saturating_mul(1000))
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        // Prices are the region's, not an owner's.
        n += sqlx::query("DELETE FROM price_samples WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// Forgets the cursors of sinks that are not in `sinks` (removed from
    /// the config) and have not moved since `before`: a daemon whose config
    /// still lags behind another's does not drop a live sink's place.
    pub async fn prune_cursors(
        &self,
        owner: &str,
        sinks: &[String],
        before: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for (sink, updated_at) in sqlx::query_as::<_, (String, i64)>(
            "SELECT sink, updated_at FROM notify_cursors WHERE owner = $1",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        {
            if updated_at < before && !sinks.contains(&sink) {
                n += sqlx::query("DELETE FROM notify_cursors WHERE owner = $1 AND sink = $2")
                    .bind(owner)
                    .bind(&sink)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(n)
    }

    /// Records that pool `pool` was deleted (`how`: "api" or "config"): its
    /// instances may be collected.
    pub async fn pool_deleted(&self, owner: &str, pool: &str, how: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deleted_pools (owner, pool, at, how) VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner, pool) DO UPDATE SET at = excluded.at, how = excluded.how",
        )
        .bind(owner)
        .bind(pool)
        .bind(unix_now())
        .bind(how)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Pools recorded as deleted.
    pub async fn deleted_pools(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT pool FROM deleted_pools WHERE owner = $1 ORDER BY pool")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A pool registered again is no longer deleted.
    pub async fn pool_revived(&self, owner: &str, pool: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deleted_pools WHERE owner = $1 AND pool = $2")
            .bind(owner)
            .bind(pool)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the pools of the config file; returns those recorded before
    /// that are no longer in it (removed from the file: deleted).
    pub async fn config_pools(
        &self,
        owner: &str,
        now: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let before: Vec<String> =
            sqlx::query_scalar("SELECT pool FROM config_pools_seen WHERE owner = $1 ORDER BY pool")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
        for p in now.iter().filter(|p| !before.contains(p)) {
            sqlx::query(
                "INSERT INTO config_pools_seen (owner, pool, at) VALUES ($1, $2, $3) ON CONFLICT (owner, pool) DO NOTHING",
            )
            .bind(owner)
            .bind(p)
            .bind(unix_now())
            .execute(&mut *tx)
            .await?;
        }
        let gone: Vec<String> = before.into_iter().filter(|p| !now.contains(p)).collect();
        for p in &gone {
            sqlx::query("DELETE FROM config_pools_seen WHERE owner = $1 AND pool = $2")
                .bind(owner)
                .bind(p)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Marks an instance of `subject` (a box, or a pool's member) as going
    /// away: it no longer counts as the live box or as the pool's capacity.
    pub async fn doom(
        &self,
        owner: &str,
        subject: &crate::subject::Subject,
        instance: &str,
        reason: crate::event_kind::EventKind,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO doomed_instances (instance_id, owner, subject, reason, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (instance_id) DO NOTHING")
            .bind(instance)
            .bind(owner)
            .bind(subject.to_string())
            .bind(reason.as_str())
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Instances marked as going away, with when (unix seconds).
    pub async fn doomed_since(&self, owner: &str) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT instance_id, at FROM doomed_instances WHERE owner = $1")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Instances marked as going away.
    pub async fn doomed(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT instance_id FROM doomed_instances WHERE owner = $1")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

/// A pool launch intent.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PoolLaunch {
    /// Row id.
    pub id: i64,
    /// Pool name.
    pub pool: String,
    /// The ClientToken.
    pub token: String,
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Subnet, if any.
    pub subnet: Option<String>,
    /// Spot or on-demand.
    #[sqlx(try_from = "String")]
    pub market: Market,
    /// Instances asked for.
    pub count: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// The last plan of a pool, as `pool list|show` print it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PoolStatus {
    /// Pool name.
    pub pool: String,
    /// Unix seconds of the pass.
    pub at: i64,
    /// Desired capacity of that pass.
    pub desired: i64,
    /// Desired capacity of the last pass that could read the demand.
    pub last_desired: Option<i64>,
    /// Unix seconds since the pool has been over its desired capacity.
    pub surplus_since: Option<i64>,
    /// The plan as JSON.
    pub plan: String,
}

impl Store {
    /// Registers (or replaces) a pool sent through the API.
    pub async fn register_pool(
        &self,
        owner: &str,
        name: &str,
        spec: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pools (owner, name, spec, registered_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner, name) DO UPDATE SET spec = excluded.spec",
        )
        .bind(owner)
        .bind(name)
        .bind(spec)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets an API pool; `false` if there was none.
    pub async fn deregister_pool(&self, owner: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pools WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM pool_status WHERE owner = $1 AND pool = $2")
            .bind(owner)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The API pools: (name, spec JSON).
    pub async fn pools(&self, owner: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, spec FROM pools WHERE owner = $1 ORDER BY name")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get("name"), r.get("spec")))
            .collect())
    }

    /// Records a pool launch before it is made; returns its id.
    pub async fn create_pool_launch(
        &self,
        owner: &str,
        launch: &PoolLaunch,
    ) -> Result<PoolLaunch, StoreError> {
        // As a box's intent: recorded only while the pool's lease holds.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO pool_launches (owner, pool, token, instance_type, zone, subnet, market, count, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(owner)
        .bind(&launch.pool)
        .bind(&launch.token)
        .bind(&launch.instance_type)
        .bind(&launch.zone)
        .bind(&launch.subnet)
        .bind(launch.market.as_str())
        .bind(launch.count)
        .bind(unix_now())
        .fetch_one(&mut *tx)
        .await?;
        if let Some(fence) = crate::fence::current()
            && !self.holds_lease_on(&mut tx, &fence).await?
        {
            tx.rollback().await?;
            return Err(StoreError::Fenced(fence));
        }
        tx.commit().await?;
        Ok(PoolLaunch {
            id: row.try_get("id")?,
            ..launch.clone()
        })
    }

    /// Closes a pool launch with what came of it.
    pub async fn close_pool_launch(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE pool_launches SET closed_at = $1, outcome = $2 WHERE id = $3")
            .bind(unix_now())
            .bind(outcome)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Pool launches recorded but never closed (a crash in between).
    pub async fn open_pool_launches(
        &self,
        owner: &str,
        pool: &str,
    ) -> Result<Vec<PoolLaunch>, StoreError> {
        Ok(sqlx::query_as::<_, PoolLaunch>(
            "SELECT id, pool, token, instance_type, zone, subnet, market, count, created_at
             FROM pool_launches WHERE owner = $1 AND pool = $2 AND closed_at IS NULL ORDER BY id",
        )
        .bind(owner)
        .bind(pool)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The pool's launches closed since `since` (unix seconds) with the
    /// instances they made (what [`Store::close_pool_launch`] recorded as
    /// `launched ID …`), oldest first.
    pub async fn launched_since(
        &self,
        owner: &str,
        pool: &str,
        since: i64,
    ) -> Result<Vec<(PoolLaunch, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pool, token, instance_type, zone, subnet, market, count, created_at, outcome
             FROM pool_launches WHERE owner = $1 AND pool = $2 AND closed_at >= $3 ORDER BY id",
        )
        .bind(owner)
        .bind(pool)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let outcome: Option<String> = row.try_get("outcome")?;
            let Some(ids) = outcome.as_deref().and_then(|o| o.strip_prefix("launched ")) else {
                continue;
            };
            out.push((
                PoolLaunch::from_row(row)?,
                ids.split_whitespace().map(str::to_owned).collect(),
            ));
        }
        Ok(out)
    }

    /// Saves the last plan of a pool.
    pub async fn save_pool_status(
        &self,
        owner: &str,
        status: &PoolStatus,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pool_status (owner, pool, at, desired, last_desired, surplus_since, plan)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (owner, pool) DO UPDATE SET at = excluded.at, desired = excluded.desired,
               last_desired = excluded.last_desired, surplus_since = excluded.surplus_since,
               plan = excluded.plan",
        )
        .bind(owner)
        .bind(&status.pool)
        .bind(status.at)
        .bind(status.desired)
        .bind(status.last_desired)
        .bind(status.surplus_since)
        .bind(&status.plan)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last plan of each pool (or of one).
    pub async fn pool_status(
        &self,
        owner: &str,
        pool: Option<&str>,
    ) -> Result<Vec<PoolStatus>, StoreError> {
        Ok(sqlx::query_as::<_, PoolStatus>(
            "SELECT pool, at, desired, last_desired, surplus_since, plan FROM pool_status
             WHERE owner = $1 AND ($2 IS NULL OR pool = $3) ORDER BY pool",
        )
        .bind(owner)
        .bind(pool)
        .bind(pool)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Appends an event about a pool.
    pub async fn record_pool_event(
        &self,
        owner: &str,
        pool: &str,
        kind: crate::event_kind::EventKind,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (at, owner, pool, kind, message) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(unix_now())
        .bind(owner)
        .bind(pool)
        .bind(kind.as_str())
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` events of a pool, newest first.
    pub async fn pool_events(
        &self,
        owner: &str,
        pool: &str,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(sqlx::query_as::<_, Event>(
            "SELECT id, at, box, pool, kind, message FROM events
             WHERE owner = $1 AND pool = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(owner)
        .bind(pool)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// An instance as the daemon last saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct SeenInstance {
    /// Instance id.
    pub instance_id: String,
    /// Its box, if any.
    #[sqlx(rename = "box")]
    pub box_name: Option<String>,
    /// Its pool, if any.
    pub pool: Option<String>,
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: Option<String>,
    /// Spot or on-demand.
    #[sqlx(try_from = "String")]
    pub market: Market,
    /// State when last seen.
    pub state: String,
    /// Unix seconds.
    pub first_seen: i64,
    /// Unix seconds.
    pub last_seen: i64,
    /// AWS's launch time (unix seconds), when known.
    pub launched_at: Option<i64>,
    /// When it was first seen going away (unix seconds).
    pub ended_at: Option<i64>,
}

impl Store {
    /// Records what a pass observed, in one transaction.
    pub async fn record_seen(
        &self,
        owner: &str,
        seen: &[spotkeeper_cloud::Instance],
    ) -> Result<(), StoreError> {
        use spotkeeper_cloud::model::tags;
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        for i in seen {
            sqlx::query(
                "INSERT INTO instances_seen (instance_id, owner, box, pool, instance_type, zone, market, state, first_seen, last_seen, launched_at, ended_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (instance_id) DO UPDATE SET state = excluded.state, last_seen = excluded.last_seen,
                     launched_at = COALESCE(instances_seen.launched_at, excluded.launched_at),
                     ended_at = COALESCE(instances_seen.ended_at, excluded.ended_at)",
            )
            .bind(i.id.as_str())
            .bind(owner)
            .bind(i.tag(tags::BOX))
            .bind(i.tag(tags::POOL))
            .bind(&i.instance_type)
            .bind(i.zone.as_deref())
            .bind(i.market.as_str())
            .bind(i.state.as_str())
            .bind(now)
            .bind(now)
            .bind(i.launched_at.map(unix_seconds))
            .bind(i.state.is_gone().then_some(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The instances seen, most recently seen first.
    pub async fn seen_instances(
        &self,
        owner: &str,
        limit: i64,
    ) -> Result<Vec<SeenInstance>, StoreError> {
        self.seen_rows(
            owner,
            "ORDER BY last_seen DESC, first_seen DESC LIMIT $2",
            limit,
        )
        .await
    }

    /// Instances whose run overlaps `[since, ∞)`.
    pub async fn runs_since(
        &self,
        owner: &str,
        since: i64,
    ) -> Result<Vec<SeenInstance>, StoreError> {
        self.seen_rows(
            owner,
            "AND COALESCE(ended_at, last_seen) >= $2 ORDER BY instance_id",
            since,
        )
        .await
    }

    /// The owner's seen instances, `rest` of the query taking one number.
    async fn seen_rows(
        &self,
        owner: &str,
        rest: &str,
        value: i64,
    ) -> Result<Vec<SeenInstance>, StoreError> {
        let query = format!("SELECT {SEEN_COLUMNS} FROM instances_seen WHERE owner = $1 {rest}");
        Ok(sqlx::query_as::<_, SeenInstance>(&query)
            .bind(owner)
            .bind(value)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Keeps the prices a pass read: a sample per offering when its price
    /// changed or ten minutes passed since the last one.
    pub async fn record_prices(
        &self,
        prices: &[spotkeeper_cloud::SpotPrice],
        at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for p in prices {
            sqlx::query(
                "INSERT INTO price_samples (instance_type, zone, at, price)
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (
                     SELECT 1 FROM (SELECT at, price FROM price_samples
                                    WHERE instance_type = $1 AND zone = $2 ORDER BY at DESC LIMIT 1) last
                     WHERE last.price = $4 AND last.at > $3 - 600)",
            )
            .bind(&p.instance_type)
            .bind(&p.zone)
            .bind(at)
            .bind(p.price)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Price samples since `since` (with the one in effect at `since`), by
    /// offering then time.
    pub async fn price_samples(&self, since: i64) -> Result<Vec<PriceSample>, StoreError> {
        Ok(sqlx::query_as::<_, PriceSample>(
            "SELECT instance_type, zone, at, price FROM price_samples s
             WHERE at >= $1 OR at = (SELECT MAX(at) FROM price_samples p
                                     WHERE p.instance_type = s.instance_type AND p.zone = s.zone AND p.at < $1)
             ORDER BY instance_type, zone, at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The cached on-demand price of a type: `Some(None)` when the Price
    /// List had none; `None` when not cached since `fresh_after`.
    pub async fn cached_on_demand(
        &self,
        region: &str,
        instance_type: &str,
        fresh_after: i64,
    ) -> Result<Option<Option<f64>>, StoreError> {
        let row = sqlx::query(
            "SELECT price FROM ondemand_prices WHERE region = $1 AND instance_type = $2 AND fetched_at >= $3",
        )
        .bind(region)
        .bind(instance_type)
        .bind(fresh_after)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get("price")))
    }

    /// Caches an on-demand price (or that there is none) as read at `at`
    /// (unix seconds).
    pub async fn cache_on_demand(
        &self,
        region: &str,
        instance_type: &str,
        price: Option<f64>,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ondemand_prices (region, instance_type, price, fetched_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (region, instance_type) DO UPDATE SET price = excluded.price, fetched_at = excluded.fetched_at",
        )
        .bind(region)
        .bind(instance_type)
        .bind(price)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spot interruption warnings handled since `since`: (instance, at).
    pub async fn interruptions_since(
        &self,
        owner: &str,
        since: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT instance, at FROM processed_events
             WHERE owner = $1 AND kind = 'spot-interruption' AND instance IS NOT NULL AND at >= $2 ORDER BY at",
        )
        .bind(owner)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("instance"), r.get("at")))
            .collect())
    }

    /// Records a pool's desired and current units at `at`.
    pub async fn record_pool_sample(
        &self,
        owner: &str,
        pool: &str,
        at: i64,
        desired: i64,
        current: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pool_samples (owner, pool, at, desired, current) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(owner)
        .bind(pool)
        .bind(at)
        .bind(desired)
        .bind(current)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A pool's samples since `since`: (at, desired, current).
    pub async fn pool_samples(
        &self,
        owner: &str,
        pool: &str,
        since: i64,
    ) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, desired, current FROM pool_samples WHERE owner = $1 AND pool = $2 AND at >= $3 ORDER BY at",
        )
        .bind(owner)
        .bind(pool)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("at"), r.get("desired"), r.get("current")))
            .collect())
    }
}

/// A daemon sharing this owner's work, as it last said it was alive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DaemonRow {
    /// Its id (host, process and a random part).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Unix milliseconds it started.
    pub started_at: i64,
    /// Unix milliseconds it last renewed its leases.
    pub seen_at: i64,
    /// Leases it held then.
    pub leases: i64,
}

/// A box's stop job ([`Store::request_stop`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StopJob {
    /// The box.
    #[serde(rename = "box")]
    pub box_name: String,
    /// `pending` (nothing done yet), `stopping`, `failed` (the last try
    /// failed; it is tried again), `done`.
    pub state: String,
    /// Unix milliseconds it was asked for.
    pub requested_at: i64,
    /// Unix milliseconds it was done.
    pub finished_at: Option<i64>,
    /// The steps done, in order.
    pub steps: Vec<StopStep>,
    /// Why the last try failed.
    pub error: Option<String>,
}

impl StopJob {
    /// Whether it is still to be finished.
    pub fn open(&self) -> bool {
        self.state != "done"
    }
}

/// One step of a stop job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StopStep {
    /// Unix milliseconds.
    pub at: i64,
    /// `terminating`, `dns`, `terminated`, `volumes`, `done` …
    pub step: String,
    /// What was done.
    pub what: String,
}

/// Milliseconds since the epoch, now (this host's clock: a record's time).
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn stop_job_from_row(r: &sqlx::any::AnyRow) -> Result<StopJob, sqlx::Error> {
    let steps: String = r.try_get("steps")?;
    Ok(StopJob {
        box_name: r.try_get("box")?,
        state: r.try_get("state")?,
        requested_at: r.try_get("requested_at")?,
        finished_at: r.try_get("finished_at")?,
        steps: steps
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, '\t');
                Some(StopStep {
                    at: parts.next()?.parse().ok()?,
                    step: parts.next()?.to_owned(),
                    what: parts.next().unwrap_or_default().to_owned(),
                })
            })
            .collect(),
        error: r.try_get("error")?,
    })
}

/// The config a live daemon runs ([`Store::live_configs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// The daemon.
    pub daemon: String,
    /// Its config's fingerprint.
    pub fingerprint: String,
    /// When that config was first recorded, as the owner's generation.
    pub generation: i64,
    /// The lease subjects its file names (`box:NAME`, `pool:NAME`).
    pub subjects: Vec<String>,
}

/// Who holds a box's or pool's lease, until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Lease {
    /// `box:NAME`, `pool:NAME` or `fleet` (the owner-wide chores).
    pub subject: String,
    /// The daemon holding it.
    pub holder: String,
    /// Unix milliseconds it expires unless renewed.
    pub expires_at: i64,
    /// Unix milliseconds the holder took it.
    pub since: i64,
    /// The fencing token: new each time the lease changes hands.
    pub generation: i64,
}

impl Store {
    /// Daemon `id` on `host` is alive at `now` (unix ms) holding `leases`,
    /// running the config whose fingerprint is `config`.
    pub async fn daemon_alive(
        &self,
        owner: &str,
        id: &str,
        host: &str,
        now: i64,
        leases: i64,
        config: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO daemons (owner, id, host, started_at, seen_at, leases, config, connections) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)
             ON CONFLICT (owner, id) DO UPDATE SET seen_at = excluded.seen_at, leases = excluded.leases, config = excluded.config,
                 connections = excluded.connections",
        )
        .bind(owner)
        .bind(id)
        .bind(host)
        .bind(now)
        .bind(leases)
        .bind(config)
        .bind(i64::from(self.connections.map_or(0, Connections::total)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What the PostgreSQL server allows against what this store and the
    /// other daemons on the database seen since `since` (unix ms, the
    /// database's clock) may open: every one of them may have all its
    /// connections open at once (a wave), and a server out of connections
    /// refuses the next with "too many clients", the lock a launch waits
    /// for included. `None` on SQLite. `me` is this daemon (owner, id): its
    /// own earlier row does not count twice.
    pub async fn check_connections(
        &self,
        me: (&str, &str),
        since: i64,
    ) -> Result<Option<ConnectionBudget>, StoreError> {
        let Some(mine) = self
            .connections
            .filter(|_| self.backend == Backend::Postgres)
        else {
            return Ok(None);
        };
        let (max_connections, reserved): (i64, i64) = sqlx::query_as(
            "SELECT current_setting('max_connections')::bigint,
                    current_setting('superuser_reserved_connections')::bigint
                    + COALESCE(NULLIF(current_setting('reserved_connections', true), ''), '0')::bigint",
        )
        .fetch_one(&self.pool)
        .await?;
        let (others, other_daemons): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(connections), 0)::bigint, COUNT(*)::bigint FROM daemons
             WHERE seen_at >= $3 AND connections > 0 AND NOT (owner = $1 AND id = $2)",
        )
        .bind(me.0)
        .bind(me.1)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(ConnectionBudget {
            max_connections,
            reserved,
            mine: i64::from(mine.total()),
            others,
            other_daemons,
        }))
    }

    /// Records the config whose fingerprint is `fingerprint` (naming the
    /// lease `subjects`), its file written at `written_at`, seen `now` (unix
    /// ms); returns its generation. A fingerprint not seen before gets the
    /// owner's next generation; one seen before keeps its own, unless it is
    /// not the newest and its file was written after the newest's (a config
    /// reverted on purpose is current again; a stale copy is not).
    pub async fn record_config(
        &self,
        owner: &str,
        fingerprint: &str,
        subjects: &[String],
        written_at: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first: on SQLite the transaction holds the lock from here.
        sqlx::query("UPDATE config_versions SET written_at = written_at WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        let newest = sqlx::query(
            "SELECT fingerprint, generation, written_at FROM config_versions WHERE owner = $1
             ORDER BY generation DESC, written_at DESC LIMIT 1",
        )
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let (newest_fp, newest_generation, newest_written): (String, i64, i64) = match &newest {
            Some(r) => (
                r.try_get("fingerprint")?,
                r.try_get("generation")?,
                r.try_get("written_at")?,
            ),
            None => (String::new(), 0, 0),
        };
        let mine: Option<i64> = sqlx::query_scalar(
            "SELECT generation FROM config_versions WHERE owner = $1 AND fingerprint = $2",
        )
        .bind(owner)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        let generation = match mine {
            Some(g) if newest_fp == fingerprint || written_at <= newest_written => g,
            _ => newest_generation + 1,
        };
        sqlx::query(
            "INSERT INTO config_versions (owner, fingerprint, generation, first_seen, written_at, subjects)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (owner, fingerprint) DO UPDATE SET generation = excluded.generation,
                 written_at = CASE WHEN excluded.written_at > config_versions.written_at
                                   THEN excluded.written_at ELSE config_versions.written_at END",
        )
        .bind(owner)
        .bind(fingerprint)
        .bind(generation)
        .bind(now)
        .bind(written_at)
        .bind(subjects.join("\n"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(generation)
    }

    /// The newest config recorded: (fingerprint, generation).
    pub async fn newest_config(&self, owner: &str) -> Result<Option<(String, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, generation FROM config_versions WHERE owner = $1
             ORDER BY generation DESC, written_at DESC LIMIT 1",
        )
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("fingerprint")?, r.try_get("generation")?)))
            .transpose()
    }

    /// The configs of the daemons seen since `since` (unix ms), one per
    /// daemon: what each live daemon's config wants.
    pub async fn live_configs(
        &self,
        owner: &str,
        since: i64,
    ) -> Result<Vec<LiveConfig>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, c.fingerprint, c.generation, c.subjects FROM daemons d JOIN config_versions c
             ON c.owner = d.owner AND c.fingerprint = d.config
             WHERE d.owner = $1 AND d.seen_at >= $2 ORDER BY d.id",
        )
        .bind(owner)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let subjects: String = r.try_get("subjects")?;
                Ok(LiveConfig {
                    daemon: r.try_get("id")?,
                    fingerprint: r.try_get("fingerprint")?,
                    generation: r.try_get("generation")?,
                    subjects: subjects
                        .lines()
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .collect()
    }

    /// The daemons seen since `since` (unix ms), by id.
    pub async fn daemons(&self, owner: &str, since: i64) -> Result<Vec<DaemonRow>, StoreError> {
        Ok(sqlx::query_as::<_, DaemonRow>(
            "SELECT id, host, started_at, seen_at, leases FROM daemons
             WHERE owner = $1 AND seen_at >= $2 ORDER BY id",
        )
        .bind(owner)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Daemons of owners other than `owner` seen since `since` (unix ms):
    /// (owner, id, host). Two configs naming different owners on one
    /// database are two installations that ignore each other's boxes and
    /// events, which is rarely what was meant.
    pub async fn other_owners_daemons(
        &self,
        owner: &str,
        since: i64,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT owner, id, host FROM daemons WHERE owner <> $1 AND seen_at >= $2 ORDER BY owner, id",
        )
        .bind(owner)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("owner")?, r.try_get("id")?, r.try_get("host")?)))
            .collect()
    }

    /// Daemon `id` stops: its leases are freed at once and it is forgotten,
    /// along with daemons silent since `stale` (unix ms).
    pub async fn daemon_gone(&self, owner: &str, id: &str, stale: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM leases WHERE owner = $1 AND holder = $2")
            .bind(owner)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM daemons WHERE owner = $1 AND (id = $2 OR seen_at < $3)")
            .bind(owner)
            .bind(id)
            .bind(stale)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every lease of the owner, by subject.
    pub async fn leases(&self, owner: &str) -> Result<Vec<Lease>, StoreError> {
        Ok(sqlx::query_as::<_, Lease>(
            "SELECT subject, holder, expires_at, since, generation FROM leases WHERE owner = $1 ORDER BY subject",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Renews every lease `holder` still holds until `until` (unix ms);
    /// returns how many it holds. A lease another daemon took is not its own
    /// any more and is left alone.
    pub async fn renew_leases(
        &self,
        owner: &str,
        holder: &str,
        until: i64,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE leases SET expires_at = $1 WHERE owner = $2 AND holder = $3")
                .bind(until)
                .bind(owner)
                .bind(holder)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Takes the lease on `subject` for `holder` until `until` if it is free,
    /// expired at `now`, or the holder's already; returns its generation
    /// (`None`: another daemon holds it). A lease that changes hands gets a
    /// new generation from the owner's counter, which only grows (a lease
    /// row deleted and taken again does not start over); the holder's own
    /// lease keeps its generation. The conditional upsert decides: of two
    /// daemons taking it at once, one wins.
    pub async fn take_lease(
        &self,
        owner: &str,
        subject: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let next: i64 = sqlx::query_scalar(
            "INSERT INTO lease_generations (owner, last) VALUES ($1, 1)
             ON CONFLICT (owner) DO UPDATE SET last = lease_generations.last + 1
             RETURNING last",
        )
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
        let generation: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (owner, subject, holder, expires_at, since, generation)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (owner, subject) DO UPDATE
                 SET holder = excluded.holder, expires_at = excluded.expires_at,
                     since = CASE WHEN leases.holder = excluded.holder THEN leases.since ELSE excluded.since END,
                     generation = CASE WHEN leases.holder = excluded.holder THEN leases.generation ELSE excluded.generation END
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $5
             RETURNING generation",
        )
        .bind(owner)
        .bind(subject)
        .bind(holder)
        .bind(until)
        .bind(now)
        .bind(next)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(generation)
    }

    /// SQL for the database's clock in unix milliseconds. Leases expire by
    /// it, never by a host's: two daemons whose clocks differ agree on it.
    fn clock_sql(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            // The file lives on one machine: its clock is the database's.
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// The database's clock, unix milliseconds.
    pub async fn clock_ms(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!("SELECT {}", self.clock_sql()))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Whether `holder` still holds `subject` at `generation`, unexpired by
    /// the database's clock (moved `offset_ms`: tests run on a paused clock;
    /// zero otherwise).
    pub async fn holds_lease(&self, fence: &crate::fence::Fence) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.holds_lease_on(&mut conn, fence).await
    }

    /// [`Store::holds_lease`] on a connection (in a transaction that
    /// records what the holder does).
    async fn holds_lease_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        fence: &crate::fence::Fence,
    ) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM leases WHERE owner = $1 AND subject = $2 AND holder = $3
             AND generation = $4 AND expires_at > {} + $5",
            self.clock_sql()
        ))
        .bind(&fence.owner)
        .bind(&fence.subject)
        .bind(&fence.holder)
        .bind(fence.generation)
        .bind(fence.offset_ms)
        .fetch_one(conn)
        .await?;
        Ok(n > 0)
    }

    /// Gives the lease on `subject` up, if `holder` holds it.
    pub async fn release_lease(
        &self,
        owner: &str,
        subject: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE owner = $1 AND subject = $2 AND holder = $3")
            .bind(owner)
            .bind(subject)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes box `box_name`'s lock in the database (PostgreSQL: a session
    /// advisory lock, so every machine sharing the database sees it),
    /// calling `on_wait` once if another holds it. The lock is held by a
    /// connection of the lock pool ([`Connections::locks`] at most: more boxes
    /// changing at once wait for a connection, as for a lock) and goes when
    /// the returned guard drops, or with the connection if the process dies.
    pub async fn lock_box(
        &self,
        owner: &str,
        box_name: &str,
        on_wait: &(dyn Fn() + Sync),
    ) -> Result<crate::lock::BoxLock, StoreError> {
        let key = format!("spotkeeper box {owner}/{box_name}");
        match self.try_lock(&key).await? {
            Some(lock) => Ok(lock),
            None => {
                on_wait();
                let mut conn = Locking(Some(self.lock_pool().acquire().await?));
                let id = lock_id(&key);
                // pg_advisory_lock returns void, which sqlx's Any driver cannot read.
                let _: String = sqlx::query_scalar("SELECT pg_advisory_lock($1)::text")
                    .bind(id)
                    .fetch_one(conn.get())
                    .await?;
                Ok(crate::lock::BoxLock::in_database(
                    conn.take(),
                    UNLOCK.into(),
                    id,
                ))
            }
        }
    }

    /// Takes the database lock named `key` if it is free (PostgreSQL only):
    /// `None` when another session holds it.
    pub async fn try_lock(&self, key: &str) -> Result<Option<crate::lock::BoxLock>, StoreError> {
        let mut conn = Locking(Some(self.lock_pool().acquire().await?));
        let id = lock_id(key);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(conn.get())
            .await?;
        // Not got: nothing is held, the connection goes back to the pool.
        let conn = conn.take();
        Ok(got.then(|| crate::lock::BoxLock::in_database(conn, UNLOCK.into(), id)))
    }

    fn lock_pool(&self) -> &AnyPool {
        self.locks.as_ref().unwrap_or(&self.pool)
    }

    /// Tells every daemon listening on this owner's channel that box
    /// `box_name` needs its holder (PostgreSQL `NOTIFY`; nothing on SQLite,
    /// where the daemon is alone).
    pub async fn wake_daemons(&self, owner: &str, box_name: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        // pg_notify returns void, which sqlx's Any driver cannot read.
        let _: String = sqlx::query_scalar("SELECT pg_notify($1, $2)::text")
            .bind(WAKE_CHANNEL)
            .bind(format!("{owner}/{box_name}"))
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Listens on the daemons' wake-up channel (PostgreSQL `LISTEN`, on a
    /// connection of its own that reconnects by itself); `None` on SQLite.
    pub async fn wake_listener(&self) -> Result<Option<WakeListener>, StoreError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect(url.expose())
            .await
            .map_err(|e| redact(e, url))?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok(Some(WakeListener(listener)))
    }

    /// Forgets that event `id` was taken (acting on it failed: the
    /// redelivered message is acted on again).
    pub async fn forget_delivery(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM processed_events WHERE owner = $1 AND event_id = $2")
            .bind(owner)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A spot price the daemon read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct PriceSample {
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Unix seconds.
    pub at: i64,
    /// USD per hour.
    pub price: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_kind::EventKind;

    /// Box `dev`'s first spot t3.micro launch, in `zone`.
    fn dev_launch(zone: Option<&str>) -> NewIntent<'_> {
        NewIntent {
            owner: "o",
            box_name: "dev",
            generation: 1,
            token: "tok-1",
            market: Market::Spot,
            instance_type: "t3.micro",
            zone,
        }
    }

    async fn intents_open_close_and_generations_advance(s: Store) {
        assert_eq!(s.next_generation("o", "dev").await.expect("gen"), 1);
        let i = s
            .create_intent(dev_launch(Some("us-east-1a")))
            .await
            .expect("create");
        assert_eq!(
            s.open_intent("o", "dev")
                .await
                .expect("open")
                .map(|i| i.token),
            Some("tok-1".into())
        );
        s.set_intent_instance(i.id, "i-1").await.expect("set");
        assert_eq!(
            s.open_intent("o", "dev")
                .await
                .expect("open")
                .and_then(|i| i.instance_id),
            Some("i-1".into())
        );
        s.close_intent(i.id, Outcome::Gone).await.expect("close");
        assert_eq!(s.open_intent("o", "dev").await.expect("open"), None);
        assert_eq!(s.next_generation("o", "dev").await.expect("gen"), 2);
        assert_eq!(s.next_generation("o", "other").await.expect("gen"), 1);
    }

    /// Three closed launches of dev, a closed pool launch, a daemon and its
    /// lease long silent, and the cursors of sinks `kept` and `removed`.
    async fn history_to_prune(s: &Store) {
        // Three launches of dev, closed: the newest one's generation stays.
        for g in 1..=3 {
            let token = format!("tok-{g}");
            let i = s
                .create_intent(NewIntent {
                    generation: g,
                    token: &token,
                    ..dev_launch(None)
                })
                .await
                .expect("create");
            s.close_intent(i.id, Outcome::Gone).await.expect("close");
        }
        let launch = s
            .create_pool_launch(
                "o",
                &PoolLaunch {
                    id: 0,
                    pool: "workers".into(),
                    token: "pool-tok".into(),
                    instance_type: "t3.micro".into(),
                    zone: "us-east-1a".into(),
                    subnet: None,
                    market: Market::Spot,
                    count: 1,
                    created_at: 0,
                },
            )
            .await
            .expect("pool launch");
        s.close_pool_launch(launch.id, "launched i-1")
            .await
            .expect("close");
        s.daemon_alive("o", "dead", "host", 1_000, 1, "c")
            .await
            .expect("alive");
        s.take_lease("o", "box:dev", "dead", 1_000, 2_000)
            .await
            .expect("lease");
        s.notify_cursor("o", "kept").await.expect("cursor");
        s.notify_cursor("o", "removed").await.expect("cursor");
    }

    async fn pruning_forgets_closed_launches_silent_daemons_and_removed_sinks(s: Store) {
        history_to_prune(&s).await;
        let later = unix_now() + 10;
        s.prune("o", later).await.expect("prune");
        let removed = s
            .prune_cursors("o", &["kept".to_owned()], later)
            .await
            .expect("cursors");
        assert_eq!(removed, 1);
        let count = |sql: &'static str| {
            let s = s.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&s.pool)
                    .await
                    .expect("count")
            }
        };
        assert_eq!(
            count("SELECT COUNT(*) FROM intents").await,
            1,
            "the newest stays"
        );
        assert_eq!(
            s.next_generation("o", "dev").await.expect("gen"),
            4,
            "never a token again"
        );
        assert_eq!(count("SELECT COUNT(*) FROM pool_launches").await, 0);
        assert_eq!(count("SELECT COUNT(*) FROM leases").await, 0);
        assert_eq!(count("SELECT COUNT(*) FROM daemons").await, 0);
        let sinks: Vec<String> = s
            .notify_cursors("o")
            .await
            .expect("cursors")
            .into_iter()
            .map(|(sink, _)| sink)
            .collect();
        assert_eq!(sinks, ["kept"]);
    }

    async fn managed_boxes_duplicates_and_doomed_instances_are_recorded(s: Store) {
        s.register_box("o", "dev", "up", None)
            .await
            .expect("register");
        s.register_box("o", "web", "api", Some("{}"))
            .await
            .expect("register");
        s.register_box("o", "dev", "up", None).await.expect("again");
        let names: Vec<String> = s
            .managed_boxes("o")
            .await
            .expect("list")
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["dev", "web"]);
        assert!(s.deregister_box("o", "dev").await.expect("deregister"));
        assert!(!s.deregister_box("o", "dev").await.expect("deregister"));
        // Being stopped, it stays managed until the stop is done.
        s.register_box("o", "dev", "api", None)
            .await
            .expect("register");
        s.request_stop("o", "dev").await.expect("asked");
        assert!(!s.deregister_box("o", "dev").await.expect("deregister"));
        assert!(
            s.managed_boxes("o")
                .await
                .expect("read")
                .iter()
                .any(|b| b.name == "dev")
        );
        assert!(
            s.first_delivery("o", "ev-1", "spot-interruption", Some("i-1"))
                .await
                .expect("first")
        );
        assert!(
            !s.first_delivery("o", "ev-1", "spot-interruption", Some("i-1"))
                .await
                .expect("dup")
        );
        let dev = crate::subject::Subject::Box("dev".into());
        s.doom("o", &dev, "i-1", EventKind::SpotInterruption)
            .await
            .expect("doom");
        s.doom("o", &dev, "i-1", EventKind::SpotInterruption)
            .await
            .expect("doom twice");
        let workers = crate::subject::Subject::Pool("workers".into());
        s.doom("o", &workers, "i-2", EventKind::SpotInterruption)
            .await
            .expect("a pool's");
        let mut doomed = s.doomed("o").await.expect("doomed");
        doomed.sort();
        assert_eq!(doomed, ["i-1", "i-2"]);
        // Stored by subject, as leases name them.
        let subjects: Vec<(String, String)> = sqlx::query_as(
            "SELECT instance_id, subject FROM doomed_instances WHERE owner = 'o' ORDER BY instance_id",
        )
        .fetch_all(&s.pool)
        .await
        .expect("rows");
        assert_eq!(
            subjects,
            [
                ("i-1".to_owned(), "box:dev".to_owned()),
                ("i-2".to_owned(), "pool:workers".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn state_file_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.db");
        {
            let s = Store::open(&path).await.expect("open");
            s.create_intent(dev_launch(None)).await.expect("create");
            s.record_event("o", Some("dev"), EventKind::Launch, "launched i-1")
                .await
                .expect("event");
        }
        let s = Store::open(&path).await.expect("reopen");
        assert!(s.open_intent("o", "dev").await.expect("open").is_some());
        let ev = s.events("o", Some("dev"), 10).await.expect("events");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].message, "launched i-1");
    }

    #[tokio::test]
    async fn two_processes_creating_the_file_at_once_both_open_it() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state.db");
            let (a, b) = tokio::join!(Store::open(&path), Store::open(&path));
            a.expect("first open");
            b.expect("second open");
        }
    }

    async fn price_samples_keep_changes_and_the_price_in_effect_at_the_start(s: Store) {
        let p = |price: f64| spotkeeper_cloud::SpotPrice {
            instance_type: "t3.micro".into(),
            zone: "us-east-1a".into(),
            price,
        };
        for (at, price) in [
            (1000, 0.01),
            (1030, 0.01),
            (1060, 0.02),
            (1700, 0.02),
            (1800, 0.02),
        ] {
            s.record_prices(&[p(price)], at).await.expect("record");
        }
        // Same price within ten minutes: not kept again; after ten minutes: kept.
        let all: Vec<(i64, f64)> = s
            .price_samples(0)
            .await
            .expect("samples")
            .iter()
            .map(|x| (x.at, x.price))
            .collect();
        assert_eq!(all, [(1000, 0.01), (1060, 0.02), (1700, 0.02)]);
        // From 1100: the sample in effect then (1060) and the later ones.
        let from: Vec<i64> = s
            .price_samples(1100)
            .await
            .expect("samples")
            .iter()
            .map(|x| x.at)
            .collect();
        assert_eq!(from, [1060, 1700]);
    }

    async fn leases_go_to_one_holder_and_expired_ones_may_be_taken(s: Store) {
        let first = s
            .take_lease("o", "box:dev", "a", 1000, 2000)
            .await
            .expect("take")
            .expect("free: taken");
        assert_eq!(
            s.take_lease("o", "box:dev", "b", 1500, 2500)
                .await
                .expect("held"),
            None
        );
        // Renewing through take keeps when it was first taken, and its
        // generation (no one else held it in between).
        assert_eq!(
            s.take_lease("o", "box:dev", "a", 1600, 2600)
                .await
                .expect("again"),
            Some(first)
        );
        assert_eq!(s.leases("o").await.expect("leases")[0].since, 1000);
        // Expired: another daemon takes it, at a new generation, and the
        // old holder cannot renew it.
        let second = s
            .take_lease("o", "box:dev", "b", 2700, 3700)
            .await
            .expect("expired")
            .expect("taken over");
        assert!(second > first, "{second} > {first}");
        assert_eq!(s.renew_leases("o", "a", 9999).await.expect("renew"), 0);
        s.release_lease("o", "box:dev", "a").await.expect("not a's");
        let l = s.leases("o").await.expect("leases");
        assert_eq!(
            (
                l[0].holder.as_str(),
                l[0].expires_at,
                l[0].since,
                l[0].generation
            ),
            ("b", 3700, 2700, second)
        );
        assert_eq!(s.renew_leases("o", "b", 4000).await.expect("renew"), 1);
        // Released and taken again, even by its last holder: a new
        // generation (the counter never goes back).
        s.release_lease("o", "box:dev", "b").await.expect("release");
        let third = s
            .take_lease("o", "box:dev", "b", 4100, 5100)
            .await
            .expect("take")
            .expect("free");
        assert!(third > second, "{third} > {second}");
        // Another owner's subject of the same name is another lease.
        assert!(
            s.take_lease("p", "box:dev", "a", 2800, 3800)
                .await
                .expect("other owner")
                .is_some()
        );
        s.daemon_alive("o", "a", "host-a", 100, 0, "c")
            .await
            .expect("alive");
        s.daemon_alive("o", "b", "host-b", 200, 1, "c")
            .await
            .expect("alive");
        s.daemon_alive("o", "b", "host-b", 300, 1, "c")
            .await
            .expect("alive again");
        let d = s.daemons("o", 150).await.expect("daemons");
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].id.as_str(), d[0].started_at, d[0].seen_at),
            ("b", 200, 300)
        );
        // A daemon stopping frees its leases at once and forgets the stale.
        s.daemon_gone("o", "b", 150).await.expect("gone");
        assert!(s.leases("o").await.expect("leases").is_empty());
        assert!(s.daemons("o", 0).await.expect("daemons").is_empty());
    }

    async fn a_fence_holds_only_for_its_holder_and_generation_until_the_database_clock_says(
        s: Store,
    ) {
        let now = s.clock_ms().await.expect("clock");
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("epoch")
            .as_millis() as i64;
        assert!(
            (now - host).abs() < 60_000,
            "the database's clock: {now} vs {host}"
        );
        let generation = s
            .take_lease("o", "box:dev", "a", now, now + 60_000)
            .await
            .expect("take")
            .expect("free");
        let fence = crate::fence::Fence {
            owner: "o".into(),
            subject: "box:dev".into(),
            holder: "a".into(),
            generation,
            offset_ms: 0,
        };
        assert!(s.holds_lease(&fence).await.expect("check"));
        let other = |f: &dyn Fn(&mut crate::fence::Fence)| {
            let mut g = fence.clone();
            f(&mut g);
            g
        };
        for wrong in [
            other(&|f| f.generation += 1),
            other(&|f| f.holder = "b".into()),
            other(&|f| f.subject = "box:other".into()),
            other(&|f| f.owner = "p".into()),
            // The daemon's clock moved past the expiry (tokio's, in tests).
            other(&|f| f.offset_ms = 61_000),
        ] {
            assert!(!s.holds_lease(&wrong).await.expect("check"), "{wrong:?}");
        }
        // An intent is recorded only while the fence in scope holds.
        let new = NewIntent {
            owner: "o",
            box_name: "dev",
            generation: 1,
            token: "tok-1",
            market: spotkeeper_cloud::Market::Spot,
            instance_type: "t3.micro",
            zone: None,
        };
        crate::fence::scope(Some(fence.clone()), s.create_intent(new))
            .await
            .expect("held: recorded");
        let stale = other(&|f| f.generation -= 1);
        let refused = crate::fence::scope(
            Some(stale),
            s.create_intent(NewIntent {
                token: "tok-2",
                generation: 2,
                ..new
            }),
        )
        .await;
        assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
        assert_eq!(
            s.open_intent("o", "dev")
                .await
                .expect("intent")
                .expect("one")
                .token,
            "tok-1",
            "the fenced-off intent was not recorded"
        );
    }

    async fn configs_get_generations_by_first_sight_and_a_rewritten_file_is_newest(s: Store) {
        let subjects = ["pool:w".to_owned()];
        let record = |fp: &'static str, written: i64| {
            let s = &s;
            let subjects = &subjects;
            async move {
                s.record_config("o", fp, subjects, written, 1)
                    .await
                    .expect("record")
            }
        };
        assert_eq!(record("v1", 100).await, 1);
        assert_eq!(record("v1", 100).await, 1, "seen before: the same");
        assert_eq!(record("v2", 200).await, 2, "new: the next");
        // A stale copy of v1 (its file older than v2's) stays older.
        assert_eq!(record("v1", 150).await, 1);
        assert_eq!(
            s.newest_config("o").await.expect("newest"),
            Some(("v2".into(), 2))
        );
        // v1 written again after v2 (reverted on purpose): the newest.
        assert_eq!(record("v1", 300).await, 3);
        assert_eq!(
            s.newest_config("o").await.expect("newest"),
            Some(("v1".into(), 3))
        );
        // Another owner counts on its own.
        assert_eq!(
            s.record_config("p", "v9", &subjects, 0, 1)
                .await
                .expect("record"),
            1
        );
        // What live daemons run, by their config.
        s.daemon_alive("o", "d1", "h", 1_000, 0, "v1")
            .await
            .expect("alive");
        s.daemon_alive("o", "d2", "h", 10, 0, "v2")
            .await
            .expect("alive");
        let live = s.live_configs("o", 500).await.expect("live");
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(
            (
                live[0].daemon.as_str(),
                live[0].generation,
                live[0].subjects.clone()
            ),
            ("d1", 3, vec!["pool:w".to_owned()])
        );
    }

    /// Runs each scenario on a SQLite store and on a real PostgreSQL server.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(super::Store::memory().await.expect("store")).await;
                })*
            }
            mod postgres {
                $(#[tokio::test]
                async fn $name() {
                    let server = spotkeeper_testkit::Postgres::start();
                    let url = super::DatabaseUrl::parse(&server.url()).expect("url");
                    super::$name(super::Store::connect(&url).await.expect("store")).await;
                })*
            }
        };
    }

    on_both!(
        leases_go_to_one_holder_and_expired_ones_may_be_taken,
        a_fence_holds_only_for_its_holder_and_generation_until_the_database_clock_says,
        configs_get_generations_by_first_sight_and_a_rewritten_file_is_newest,
        intents_open_close_and_generations_advance,
        pruning_forgets_closed_launches_silent_daemons_and_removed_sinks,
        managed_boxes_duplicates_and_doomed_instances_are_recorded,
        price_samples_keep_changes_and_the_price_in_effect_at_the_start
    );

    #[tokio::test]
    async fn a_box_lock_in_postgres_holds_off_another_connection_until_dropped() {
        let server = spotkeeper_testkit::Postgres::start();
        let url = DatabaseUrl::parse(&server.url()).expect("url");
        let (a, b) = (
            Store::connect(&url).await.expect("a"),
            Store::connect(&url).await.expect("b"),
        );
        let first = a
            .lock_box("o", "dev", &|| panic!("free"))
            .await
            .expect("lock");
        let waited = std::sync::atomic::AtomicBool::new(false);
        let on_wait = || waited.store(true, std::sync::atomic::Ordering::SeqCst);
        let second = b.lock_box("o", "dev", &on_wait);
        let second = tokio::time::timeout(Duration::from_millis(500), second).await;
        assert!(second.is_err(), "the second lock must wait");
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
        // Another box is not held off.
        let _other = b
            .lock_box("o", "web", &|| panic!("free"))
            .await
            .expect("web");
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), b.lock_box("o", "dev", &|| {}))
            .await
            .expect("taken once the first is dropped")
            .expect("lock");
    }

    #[tokio::test]
    async fn a_daemons_store_holds_a_box_lock_for_every_task_beside_its_id() {
        let server = spotkeeper_testkit::Postgres::start();
        let url = DatabaseUrl::parse(&server.url()).expect("url");
        // 40 tasks (more than the 32 lock connections there used to be).
        let store = Store::connect_with(&url, Connections::daemon(40))
            .await
            .expect("store");
        let _id = store
            .try_lock("spotkeeper daemon o/d1")
            .await
            .expect("try")
            .expect("the daemon's id");
        let names: Vec<String> = (0..40).map(|i| format!("b{i:02}")).collect();
        fn free() {
            panic!("every box is free")
        }
        let all =
            futures_util::future::join_all(names.iter().map(|n| store.lock_box("o", n, &free)));
        let held = tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("no box waits for another's lock connection");
        assert_eq!(held.into_iter().filter(Result::is_ok).count(), 40);
        // Still a connection for a lock being tried.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), store.try_lock("spare"))
                .await
                .expect("a spare connection")
                .expect("try")
                .is_some()
        );
        assert_eq!(Connections::daemon(40).total(), 40 + 19);
    }

    #[tokio::test]
    async fn the_connection_budget_counts_live_daemons_and_the_servers_reserve() {
        let server = spotkeeper_testkit::Postgres::start_with(&["max_connections=100"]);
        let url = DatabaseUrl::parse(&server.url()).expect("url");
        let store = Store::connect_with(&url, Connections::daemon(64))
            .await
            .expect("store");
        let other = Store::connect_with(&url, Connections::daemon(10))
            .await
            .expect("store");
        let now = store.clock_ms().await.expect("clock");
        other
            .daemon_alive("o", "d2", "h", now, 0, "c")
            .await
            .expect("alive");
        // Silent for long: not counted. This daemon's own row: not twice.
        other
            .daemon_alive("o", "d3", "h", now - 600_000, 0, "c")
            .await
            .expect("alive");
        store
            .daemon_alive("o", "d1", "h", now, 0, "c")
            .await
            .expect("alive");
        let budget = store
            .check_connections(("o", "d1"), now - 60_000)
            .await
            .expect("read")
            .expect("PostgreSQL");
        assert_eq!(
            budget,
            ConnectionBudget {
                max_connections: 100,
                reserved: 3,
                mine: 83,
                others: 29,
                other_daemons: 1,
            }
        );
        assert!(!budget.fits(), "83 + 29 > 97");
        let alone = store
            .check_connections(("o", "d1"), now + 1)
            .await
            .expect("read")
            .expect("PostgreSQL");
        assert!(alone.fits(), "83 <= 97");
        assert_eq!(
            Store::memory()
                .await
                .expect("store")
                .check_connections(("o", "d1"), 0)
                .await
                .expect("read"),
            None,
            "SQLite has no connection limit to share"
        );
    }

    /// Events after `after`: (place, message).
    async fn after(store: &Store, after: i64) -> Vec<(i64, String)> {
        store
            .events_after("o", after, 100)
            .await
            .expect("events")
            .into_iter()
            .map(|(place, e)| (place, e.message))
            .collect()
    }

    #[tokio::test]
    async fn an_event_committed_late_or_stamped_ahead_is_never_stepped_over() {
        let server = spotkeeper_testkit::Postgres::start();
        let url = DatabaseUrl::parse(&server.url()).expect("url");
        let (reader, writer) = (
            Store::connect(&url).await.expect("reader"),
            Store::connect(&url).await.expect("writer"),
        );
        // A transaction takes an id first and commits last.
        let mut slow = writer.pool.begin().await.expect("begin");
        sqlx::query("INSERT INTO events (at, owner, kind, message) VALUES ($1, 'o', 'k', 'late')")
            .bind(unix_now())
            .execute(&mut *slow)
            .await
            .expect("insert");
        writer
            .record_event("o", None, EventKind::Launch, "early")
            .await
            .expect("early");
        let seen = after(&reader, 0).await;
        assert_eq!(
            seen.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            ["early"]
        );
        let cursor = seen[0].0;
        slow.commit().await.expect("commit");
        // A writer whose clock runs 10 s ahead.
        sqlx::query("INSERT INTO events (at, owner, kind, message) VALUES ($1, 'o', 'k', 'ahead')")
            .bind(unix_now() + 10)
            .execute(&writer.pool)
            .await
            .expect("insert");
        let next = after(&reader, cursor).await;
        assert_eq!(
            next.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            ["late", "ahead"],
            "the late commit and the stamp ahead are both delivered, after the cursor"
        );
        assert!(next.iter().all(|(place, _)| *place > cursor));
        // SQLite: ids are commit order; places follow them.
        let sqlite = Store::memory().await.expect("sqlite");
        for m in ["a", "b"] {
            sqlite
                .record_event("o", None, EventKind::Launch, m)
                .await
                .expect("record");
        }
        assert_eq!(
            after(&sqlite, 0).await,
            [(1, "a".to_owned()), (2, "b".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_wrong_password_error_does_not_show_the_password() {
        let server = spotkeeper_testkit::Postgres::start();
        // Trust authentication accepts any password; a missing database fails.
        let url = server
            .url_of("no_such_db")
            .replace("spotkeeper@", "spotkeeper:pw-s3cr3t@");
        let e = Store::connect(&DatabaseUrl::parse(&url).expect("url"))
            .await
            .expect_err("no such database");
        assert!(e.to_string().contains("no_such_db"), "{e}");
        assert!(!e.to_string().contains("pw-s3cr3t"), "{e}");
        assert!(!format!("{e:?}").contains("pw-s3cr3t"), "{e:?}");
    }

    #[tokio::test]
    async fn a_wake_up_reaches_every_listening_daemon_and_sqlite_has_none() {
        let server = spotkeeper_testkit::Postgres::start();
        let url = DatabaseUrl::parse(&server.url()).expect("url");
        let (a, b) = (
            Store::connect(&url).await.expect("a"),
            Store::connect(&url).await.expect("b"),
        );
        let mut la = a.wake_listener().await.expect("listen").expect("postgres");
        let mut lb = b.wake_listener().await.expect("listen").expect("postgres");
        b.wake_daemons("o", "dev").await.expect("wake");
        for l in [&mut la, &mut lb] {
            let got = tokio::time::timeout(Duration::from_secs(10), l.next())
                .await
                .expect("woken")
                .expect("payload");
            assert_eq!(got, ("o".to_owned(), "dev".to_owned()));
        }
        let memory = Store::memory().await.expect("sqlite");
        assert!(memory.wake_listener().await.expect("none").is_none());
        memory.wake_daemons("o", "dev").await.expect("a no-op");
    }

    /// One column as both schemas can state it: its table, name, the family
    /// of its type and whether it may be null.
    type Column = (String, String, &'static str, bool);

    /// The family of a declared type: SQLite's affinity rules, PostgreSQL's
    /// names (INTEGER and BIGINT both hold an i64 through sqlx's Any driver).
    fn family(declared: &str) -> &'static str {
        let t = declared.to_ascii_lowercase();
        if t.contains("int") {
            "integer"
        } else if t.contains("char") || t.contains("text") || t.contains("clob") {
            "text"
        } else if t.contains("real") || t.contains("floa") || t.contains("doub") {
            "real"
        } else if t.contains("bool") {
            "boolean"
        } else if t.contains("blob") || t.contains("bytea") {
            "blob"
        } else {
            "other"
        }
    }

    async fn sqlite_columns(s: &Store) -> Vec<Column> {
        let rows = sqlx::query(
            "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
        )
        .fetch_all(&s.pool)
        .await
        .expect("sqlite columns");
        rows.iter()
            .map(|r| {
                let declared: String = r.get(2);
                // A primary key column is never null in PostgreSQL; SQLite
                // reports it nullable unless it says NOT NULL as well.
                let not_null = r.get::<i64, _>(3) != 0 || r.get::<i64, _>(4) != 0;
                (r.get(0), r.get(1), family(&declared), !not_null)
            })
            .collect()
    }

    async fn postgres_columns(s: &Store) -> Vec<Column> {
        let rows = sqlx::query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
        )
        .fetch_all(&s.pool)
        .await
        .expect("postgres columns");
        rows.iter()
            .map(|r| {
                let declared: String = r.get(2);
                let nullable: String = r.get(3);
                (r.get(0), r.get(1), family(&declared), nullable == "YES")
            })
            .collect()
    }

    /// The two stores' migrations are written twice (their SQL dialects
    /// differ): every table and column, its type family and nullability,
    /// must be the same in both, or a feature works on one store only.
    #[tokio::test]
    async fn the_sqlite_and_postgresql_schemas_have_the_same_columns() {
        let server = spotkeeper_testkit::Postgres::start();
        let url = DatabaseUrl::parse(&server.url()).expect("url");
        let pg = Store::connect(&url).await.expect("postgres");
        let lite = Store::memory().await.expect("sqlite");
        let mut a = sqlite_columns(&lite).await;
        let mut b = postgres_columns(&pg).await;
        a.sort();
        b.sort();
        assert!(a.len() > 40, "the schema was read: {a:?}");
        let only = |x: &[Column], y: &[Column]| -> Vec<String> {
            x.iter()
                .filter(|c| !y.contains(c))
                .map(|(t, c, ty, null)| {
                    format!("{t}.{c} {ty}{}", if *null { " null" } else { " not null" })
                })
                .collect()
        };
        let (sqlite_only, postgres_only) = (only(&a, &b), only(&b, &a));
        assert!(
            sqlite_only.is_empty() && postgres_only.is_empty(),
            "the schemas differ\n  only in SQLite:     {sqlite_only:?}\n  only in PostgreSQL: {postgres_only:?}"
        );
    }
}
