//! The state file: SQLite through sqlx (WAL, embedded append-only migrations).
//! It holds launch intents (written before the launch call, closed when the
//! instance is seen gone) and an append-only event log.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spotkeeper_cloud::Market;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{FromRow, Row};

/// A state-file failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the file failed.
    #[error("cannot open the state file {path}: {source}")]
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
    /// The last event id the receiver took (or skipped as not wanted).
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

/// The state store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
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
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Another spotkeeper process (the daemon, a second CLI) may hold the
            // write lock for a moment; wait rather than fail.
            .busy_timeout(Duration::from_secs(15));
        // sqlx's SQLite migrator takes no lock: two processes opening a new
        // file at once would both create the tables. Migrate one at a time.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let _migrating = crate::lock::lock_file(lock_path.into(), &|| {})
            .await
            .map_err(|e| err(sqlx::Error::Io(e)))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(err)?;
        sqlx::migrate!("./migrations")
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
        Ok(Self { pool })
    }

    /// An in-memory store, for tests.
    pub async fn memory() -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: ":memory:".into(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(err)?;
        // One connection: every connection to :memory: is a separate database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(err)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| err(e.into()))?;
        Ok(Self { pool })
    }

    /// The box's open intent (not yet closed), if any.
    pub async fn open_intent(
        &self,
        owner: &str,
        box_name: &str,
    ) -> Result<Option<Intent>, StoreError> {
        let row = sqlx::query(
            "SELECT id, owner, box, generation, token, market, instance_type, zone, created_at, instance_id
             FROM intents WHERE owner = ? AND box = ? AND closed_at IS NULL ORDER BY id DESC LIMIT 1",
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
            sqlx::query_scalar("SELECT MAX(generation) FROM intents WHERE owner = ? AND box = ?")
                .bind(owner)
                .bind(box_name)
                .fetch_one(&self.pool)
                .await?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Records a new open intent.
    pub async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, StoreError> {
        let created_at = unix_now();
        let id = sqlx::query(
            "INSERT INTO intents (owner, box, generation, token, market, instance_type, zone, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(new.owner)
        .bind(new.box_name)
        .bind(new.generation)
        .bind(new.token)
        .bind(new.market.as_str())
        .bind(new.instance_type)
        .bind(new.zone)
        .bind(created_at)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
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
        sqlx::query("UPDATE intents SET instance_id = ? WHERE id = ?")
            .bind(instance_id)
            .bind(intent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes an intent with a one-word outcome (`gone`, `failed`, `stopped`, `lost-race`).
    pub async fn close_intent(&self, intent_id: i64, outcome: Outcome) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE intents SET closed_at = ?, outcome = ? WHERE id = ? AND closed_at IS NULL",
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
        sqlx::query("UPDATE intents SET closed_at = ?, outcome = ? WHERE owner = ? AND box = ? AND closed_at IS NULL")
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
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO events (at, owner, box, kind, message) VALUES (?, ?, ?, ?, ?)")
            .bind(unix_now())
            .bind(owner)
            .bind(box_name)
            .bind(kind)
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` events of the owner after event id `after`, oldest first.
    pub async fn events_after(
        &self,
        owner: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(sqlx::query_as::<_, Event>(
            "SELECT id, at, box, pool, kind, message FROM events
             WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(owner)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Where a notification sink stands; a sink seen for the first time
    /// starts after the newest event (it is not sent the history).
    pub async fn notify_cursor(&self, owner: &str, sink: &str) -> Result<NotifyCursor, StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO notify_cursors (owner, sink, last_event, attempts, updated_at)
             VALUES (?, ?, (SELECT COALESCE(MAX(id), 0) FROM events), 0, ?)",
        )
        .bind(owner)
        .bind(sink)
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT last_event, attempts, last_error FROM notify_cursors WHERE owner = ? AND sink = ?",
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
            "UPDATE notify_cursors SET last_event = ?, attempts = 0, last_error = NULL, updated_at = ?
             WHERE owner = ? AND sink = ?",
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
            "UPDATE notify_cursors SET last_event = ?, attempts = ?, last_error = ?, updated_at = ?
             WHERE owner = ? AND sink = ?",
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
            "SELECT sink, last_event, attempts, last_error FROM notify_cursors WHERE owner = ? ORDER BY sink",
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
             WHERE owner = ? AND (? IS NULL OR box = ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(owner)
        .bind(box_name)
        .bind(box_name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
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
            "INSERT INTO managed_boxes (owner, name, source, spec, registered_at) VALUES (?, ?, ?, ?, ?)
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
        sqlx::query("INSERT OR IGNORE INTO managed_boxes (owner, name, source, spec, registered_at) VALUES (?, ?, ?, NULL, ?)")
            .bind(owner)
            .bind(name)
            .bind(source)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stops managing a box; returns whether it was managed.
    pub async fn deregister_box(&self, owner: &str, name: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM managed_boxes WHERE owner = ? AND name = ?")
            .bind(owner)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// The managed boxes, by name.
    pub async fn managed_boxes(&self, owner: &str) -> Result<Vec<ManagedBox>, StoreError> {
        Ok(sqlx::query_as::<_, ManagedBox>("SELECT name, source, spec, registered_at FROM managed_boxes WHERE owner = ? ORDER BY name")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Whether this owner's event `id` was acted on already.
    pub async fn seen(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM processed_events WHERE owner = ? AND event_id = ?",
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
        let n = sqlx::query("INSERT OR IGNORE INTO processed_events (owner, event_id, at, kind, instance) VALUES (?, ?, ?, ?, ?)")
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
            "DELETE FROM processed_events WHERE owner = ? AND at < ?",
            "DELETE FROM doomed_instances WHERE owner = ? AND at < ?",
            "DELETE FROM instances_seen WHERE owner = ? AND last_seen < ?",
            "DELETE FROM events WHERE owner = ? AND at < ?",
            "DELETE FROM pool_samples WHERE owner = ? AND at < ?",
        ] {
            n += sqlx::query(sql)
                .bind(owner)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        // Prices are the region's, not an owner's.
        n += sqlx::query("DELETE FROM price_samples WHERE at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// Records that pool `pool` was deleted (`how`: "api" or "config"): its
    /// instances may be collected.
    pub async fn pool_deleted(&self, owner: &str, pool: &str, how: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO deleted_pools (owner, pool, at, how) VALUES (?, ?, ?, ?)",
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
            sqlx::query_scalar("SELECT pool FROM deleted_pools WHERE owner = ? ORDER BY pool")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A pool registered again is no longer deleted.
    pub async fn pool_revived(&self, owner: &str, pool: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deleted_pools WHERE owner = ? AND pool = ?")
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
            sqlx::query_scalar("SELECT pool FROM config_pools_seen WHERE owner = ? ORDER BY pool")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
        for p in now.iter().filter(|p| !before.contains(p)) {
            sqlx::query(
                "INSERT OR IGNORE INTO config_pools_seen (owner, pool, at) VALUES (?, ?, ?)",
            )
            .bind(owner)
            .bind(p)
            .bind(unix_now())
            .execute(&mut *tx)
            .await?;
        }
        let gone: Vec<String> = before.into_iter().filter(|p| !now.contains(p)).collect();
        for p in &gone {
            sqlx::query("DELETE FROM config_pools_seen WHERE owner = ? AND pool = ?")
                .bind(owner)
                .bind(p)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Marks an instance as going away (it no longer counts as the live box).
    pub async fn doom(
        &self,
        owner: &str,
        box_name: &str,
        instance: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO doomed_instances (instance_id, owner, box, reason, at) VALUES (?, ?, ?, ?, ?)")
            .bind(instance)
            .bind(owner)
            .bind(box_name)
            .bind(reason)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Instances marked as going away, with when (unix seconds).
    pub async fn doomed_since(&self, owner: &str) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT instance_id, at FROM doomed_instances WHERE owner = ?")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Instances marked as going away.
    pub async fn doomed(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT instance_id FROM doomed_instances WHERE owner = ?")
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
            "INSERT INTO pools (owner, name, spec, registered_at) VALUES (?, ?, ?, ?)
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
        let done = sqlx::query("DELETE FROM pools WHERE owner = ? AND name = ?")
            .bind(owner)
            .bind(name)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM pool_status WHERE owner = ? AND pool = ?")
            .bind(owner)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The API pools: (name, spec JSON).
    pub async fn pools(&self, owner: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, spec FROM pools WHERE owner = ? ORDER BY name")
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
        let row = sqlx::query(
            "INSERT INTO pool_launches (owner, pool, token, instance_type, zone, subnet, market, count, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        .fetch_one(&self.pool)
        .await?;
        Ok(PoolLaunch {
            id: row.try_get("id")?,
            ..launch.clone()
        })
    }

    /// Closes a pool launch with what came of it.
    pub async fn close_pool_launch(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE pool_launches SET closed_at = ?, outcome = ? WHERE id = ?")
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
             FROM pool_launches WHERE owner = ? AND pool = ? AND closed_at IS NULL ORDER BY id",
        )
        .bind(owner)
        .bind(pool)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Saves the last plan of a pool.
    pub async fn save_pool_status(
        &self,
        owner: &str,
        status: &PoolStatus,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pool_status (owner, pool, at, desired, last_desired, surplus_since, plan)
             VALUES (?, ?, ?, ?, ?, ?, ?)
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
             WHERE owner = ? AND (? IS NULL OR pool = ?) ORDER BY pool",
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
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO events (at, owner, pool, kind, message) VALUES (?, ?, ?, ?, ?)")
            .bind(unix_now())
            .bind(owner)
            .bind(pool)
            .bind(kind)
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
             WHERE owner = ? AND pool = ? ORDER BY id DESC LIMIT ?",
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
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
            "ORDER BY last_seen DESC, first_seen DESC LIMIT ?",
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
            "AND COALESCE(ended_at, last_seen) >= ? ORDER BY instance_id",
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
        let query = format!("SELECT {SEEN_COLUMNS} FROM instances_seen WHERE owner = ? {rest}");
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
                 SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS (
                     SELECT 1 FROM (SELECT at, price FROM price_samples
                                    WHERE instance_type = ?1 AND zone = ?2 ORDER BY at DESC LIMIT 1) last
                     WHERE last.price = ?4 AND last.at > ?3 - 600)",
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
             WHERE at >= ?1 OR at = (SELECT MAX(at) FROM price_samples p
                                     WHERE p.instance_type = s.instance_type AND p.zone = s.zone AND p.at < ?1)
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
            "SELECT price FROM ondemand_prices WHERE region = ? AND instance_type = ? AND fetched_at >= ?",
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
            "INSERT INTO ondemand_prices (region, instance_type, price, fetched_at) VALUES (?, ?, ?, ?)
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
             WHERE owner = ? AND kind = 'spot-interruption' AND instance IS NOT NULL AND at >= ? ORDER BY at",
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
            "INSERT INTO pool_samples (owner, pool, at, desired, current) VALUES (?, ?, ?, ?, ?)",
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
            "SELECT at, desired, current FROM pool_samples WHERE owner = ? AND pool = ? AND at >= ? ORDER BY at",
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

    #[tokio::test]
    async fn intents_open_close_and_generations_advance() {
        let s = Store::memory().await.expect("store");
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

    #[tokio::test]
    async fn managed_boxes_duplicates_and_doomed_instances_are_recorded() {
        let s = Store::memory().await.expect("store");
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
        s.doom("o", "dev", "i-1", "spot-interruption")
            .await
            .expect("doom");
        s.doom("o", "dev", "i-1", "spot-interruption")
            .await
            .expect("doom twice");
        assert_eq!(s.doomed("o").await.expect("doomed"), ["i-1"]);
    }

    #[tokio::test]
    async fn state_file_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.db");
        {
            let s = Store::open(&path).await.expect("open");
            s.create_intent(dev_launch(None)).await.expect("create");
            s.record_event("o", Some("dev"), "launch", "launched i-1")
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

    #[tokio::test]
    async fn price_samples_keep_changes_and_the_price_in_effect_at_the_start() {
        let s = Store::memory().await.expect("store");
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
}
