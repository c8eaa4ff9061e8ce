//! The daemons sharing one database: who is alive (and with which config
//! and how many connections), leases with fencing generations decided by
//! the database's clock, box locks, and the wake-up channel.

use super::*;

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

/// The channel daemons wake each other on ([`OwnerStore::wake_daemons`]).
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

/// Releases an advisory lock taken by [`OwnerStore::lock_box`].
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

/// The config a live daemon runs ([`OwnerStore::live_configs`]).
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

    /// Commits `tx` if no fence is in scope or it still holds; rolls back
    /// (nothing recorded) otherwise. Every family that records a step under
    /// a fence (intents, pool launches, stop jobs) commits through it.
    pub(super) async fn fenced_commit(
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

    /// [`Store::holds_lease`] on a connection (in a transaction that
    /// records what the holder does).
    async fn holds_lease_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        fence: &crate::fence::Fence,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM leases WHERE {}",
            self.lease_held_sql(1)
        );
        let n: i64 = bind_fence(sqlx::query_scalar(&sql), fence)
            .fetch_one(conn)
            .await?;
        Ok(n > 0)
    }

    /// The condition "the fence's holder still holds its lease", over the
    /// `leases` table, with the fence's five values as parameters from
    /// `$first` on, bound by [`bind_fence`].
    pub(super) fn lease_held_sql(&self, first: usize) -> String {
        let p = |n: usize| format!("${}", first + n);
        format!(
            "owner = {} AND subject = {} AND holder = {} AND generation = {} AND expires_at > {} + {}",
            p(0),
            p(1),
            p(2),
            p(3),
            self.clock_sql(),
            p(4)
        )
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
}

impl OwnerStore<'_> {
    /// Daemon `id` on `host` is alive at `now` (unix ms) holding `leases`,
    /// running the config whose fingerprint is `config`.
    pub async fn daemon_alive(
        self,
        id: &str,
        host: &str,
        now: i64,
        leases: i64,
        config: &str,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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

    /// Records the config whose fingerprint is `fingerprint` (naming the
    /// lease `subjects`), its file written at `written_at`, seen `now` (unix
    /// ms); returns its generation. A fingerprint not seen before gets the
    /// owner's next generation; one seen before keeps its own, unless it is
    /// not the newest and its file was written after the newest's (a config
    /// reverted on purpose is current again; a stale copy is not).
    pub async fn record_config(
        self,
        fingerprint: &str,
        subjects: &[String],
        written_at: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let owner = self.owner;
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
    pub async fn newest_config(self) -> Result<Option<(String, i64)>, StoreError> {
        let owner = self.owner;
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
    pub async fn live_configs(self, since: i64) -> Result<Vec<LiveConfig>, StoreError> {
        let owner = self.owner;
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
    pub async fn daemons(self, since: i64) -> Result<Vec<DaemonRow>, StoreError> {
        let owner = self.owner;
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
        self,
        since: i64,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let owner = self.owner;
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
    pub async fn daemon_gone(self, id: &str, stale: i64) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn leases(self) -> Result<Vec<Lease>, StoreError> {
        let owner = self.owner;
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
    pub async fn renew_leases(self, holder: &str, until: i64) -> Result<u64, StoreError> {
        let owner = self.owner;
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
        self,
        subject: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<i64>, StoreError> {
        let owner = self.owner;
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

    /// Gives the lease on `subject` up, if `holder` holds it.
    pub async fn release_lease(self, subject: &str, holder: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
        self,
        box_name: &str,
        on_wait: &(dyn Fn() + Sync),
    ) -> Result<crate::lock::BoxLock, StoreError> {
        let owner = self.owner;
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

    /// Tells every daemon listening on this owner's channel that box
    /// `box_name` needs its holder (PostgreSQL `NOTIFY`; nothing on SQLite,
    /// where the daemon is alone).
    pub async fn wake_daemons(self, box_name: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
}

/// Binds a fence's values in the order [`Store::lease_held_sql`] names them.
pub(super) fn bind_fence<'q, O>(
    q: sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>,
    fence: &'q crate::fence::Fence,
) -> sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
    q.bind(&fence.owner)
        .bind(&fence.subject)
        .bind(&fence.holder)
        .bind(fence.generation)
        .bind(fence.offset_ms)
}
