//! The event log and what reads it: events in commit order (a sequence
//! assigned under a lock, so a late commit is never stepped over), the
//! notification sinks' cursors, and the queue's processed message ids
//! (a redelivered message is acted on once).

use super::*;

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
    /// The place ([`OwnerStore::events_after`]) of the last event the receiver
    /// took (or skipped as not wanted). For events recorded before places
    /// existed, the place is the id.
    pub last_event: i64,
    /// Failed attempts at the next event.
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The PostgreSQL advisory lock the event sequencers of every process take
/// ("spotkeep" in ASCII).
const ORDERING_LOCK: i64 = 0x7370_6f74_6b65_6570;

impl Store {
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
}

impl OwnerStore<'_> {
    /// Appends to the event log.
    pub async fn record_event(
        self,
        box_name: Option<&str>,
        kind: crate::event_kind::EventKind,
        message: &str,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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
        self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let owner = self.owner;
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

    /// Where a notification sink stands; a sink seen for the first time
    /// starts after the newest event (it is not sent the history).
    pub async fn notify_cursor(self, sink: &str) -> Result<NotifyCursor, StoreError> {
        let owner = self.owner;
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
    pub async fn notify_delivered(self, sink: &str, last_event: i64) -> Result<(), StoreError> {
        let owner = self.owner;
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
        self,
        sink: &str,
        cursor: &NotifyCursor,
        why: &str,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn notify_cursors(self) -> Result<Vec<(String, NotifyCursor)>, StoreError> {
        let owner = self.owner;
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
        self,
        box_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let owner = self.owner;
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

    /// Whether this owner's event `id` was acted on already.
    pub async fn seen(self, id: &str) -> Result<bool, StoreError> {
        let owner = self.owner;
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
        self,
        id: &str,
        kind: &str,
        instance: Option<&str>,
    ) -> Result<bool, StoreError> {
        let owner = self.owner;
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

    /// Forgets the cursors of sinks that are not in `sinks` (removed from
    /// the config) and have not moved since `before`: a daemon whose config
    /// still lags behind another's does not drop a live sink's place.
    pub async fn prune_cursors(self, sinks: &[String], before: i64) -> Result<u64, StoreError> {
        let owner = self.owner;
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

    /// Appends an event about a pool.
    pub async fn record_pool_event(
        self,
        pool: &str,
        kind: crate::event_kind::EventKind,
        message: &str,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn pool_events(self, pool: &str, limit: i64) -> Result<Vec<Event>, StoreError> {
        let owner = self.owner;
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

    /// Forgets that event `id` was taken (acting on it failed: the
    /// redelivered message is acted on again).
    pub async fn forget_delivery(self, id: &str) -> Result<(), StoreError> {
        let owner = self.owner;
        sqlx::query("DELETE FROM processed_events WHERE owner = $1 AND event_id = $2")
            .bind(owner)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
