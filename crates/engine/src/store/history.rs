//! What was seen, for reports and the dashboard: instances with their
//! lifetimes, spot prices as they changed, on-demand prices, pool samples;
//! and pruning of everything older than the retention.

use super::*;

/// The columns `seen_instances` and `runs_since` select.
const SEEN_COLUMNS: &str = "instance_id, box, pool, instance_type, zone, market, state, first_seen, last_seen, launched_at, ended_at";

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

impl Store {
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
            sqlx::query(
                "INSERT INTO latest_prices (instance_type, zone, at, price) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (instance_type, zone) DO UPDATE SET at = excluded.at, price = excluded.price
                 WHERE latest_prices.at <= excluded.at",
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

    /// The price each offering was last read at: one row per offering.
    pub async fn latest_prices(&self) -> Result<Vec<PriceSample>, StoreError> {
        Ok(sqlx::query_as::<_, PriceSample>(
            "SELECT instance_type, zone, at, price FROM latest_prices ORDER BY instance_type, zone",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Price samples of one instance type since `since` (with the one in
    /// effect at `since` in each zone), by zone then time: what a chart or
    /// a run's cost needs, not every offering of the region.
    pub async fn price_samples_of(
        &self,
        instance_type: &str,
        since: i64,
    ) -> Result<Vec<PriceSample>, StoreError> {
        Ok(sqlx::query_as::<_, PriceSample>(
            "SELECT instance_type, zone, at, price FROM price_samples
             WHERE instance_type = $2 AND at >= $1
             UNION ALL
             SELECT s.instance_type, s.zone, s.at, s.price FROM latest_prices l
             JOIN price_samples s ON s.instance_type = l.instance_type AND s.zone = l.zone
                 AND s.at = (SELECT MAX(p.at) FROM price_samples p
                             WHERE p.instance_type = l.instance_type AND p.zone = l.zone AND p.at < $1)
             WHERE l.instance_type = $2
             ORDER BY instance_type, zone, at",
        )
        .bind(since)
        .bind(instance_type)
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
}

impl OwnerStore<'_> {
    /// Forgets this owner's processed event ids, doomed instances, seen
    /// instances and events older than `before` (unix seconds); returns how
    /// many rows went. An event redelivered after that long is stale anyway.
    pub async fn prune(self, before: i64) -> Result<u64, StoreError> {
        let owner = self.owner;
        let mut n = 0;
        for sql in [
            "DELETE FROM processed_events WHERE owner = $1 AND at < $2",
            "DELETE FROM doomed_instances WHERE owner = $1 AND at < $2",
            "DELETE FROM instances_seen WHERE owner = $1 AND last_seen < $2",
            "DELETE FROM events WHERE owner = $1 AND at < $2",
            "DELETE FROM pool_samples WHERE owner = $1 AND at < $2",
            // Closed launches are history; each box keeps its newest intent,
            // whose generation the next launch's token counts on.
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

    /// Records what a pass observed, in one transaction.
    pub async fn record_seen(self, seen: &[spotkeeper_cloud::Instance]) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn seen_instances(self, limit: i64) -> Result<Vec<SeenInstance>, StoreError> {
        let owner = self.owner;
        self.seen_rows(
            owner,
            "ORDER BY last_seen DESC, first_seen DESC LIMIT $2",
            limit,
        )
        .await
    }

    /// Instances whose run overlaps `[since, ∞)`.
    pub async fn runs_since(self, since: i64) -> Result<Vec<SeenInstance>, StoreError> {
        let owner = self.owner;
        self.seen_rows(
            owner,
            "AND COALESCE(ended_at, last_seen) >= $2 ORDER BY instance_id",
            since,
        )
        .await
    }

    /// Spot interruption warnings handled since `since`: (instance, at).
    pub async fn interruptions_since(self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let owner = self.owner;
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

    /// The boxes' interruptions and recoveries since `since`, in order:
    /// `(box, kind, at)` for the warnings and notices the daemon acted on
    /// and the `replaced` that followed (drills included: a drill's warning
    /// is recorded as one).
    pub async fn recoveries_since(
        self,
        since: i64,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let owner = self.owner;
        let rows = sqlx::query(
            "SELECT box, kind, at FROM events
             WHERE owner = $1 AND box IS NOT NULL AND at >= $2
               AND kind IN ('spot-interruption', 'rebalance', 'scheduled-change', 'state-change', 'replaced')
             ORDER BY id",
        )
        .bind(owner)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("box"), r.get("kind"), r.get("at")))
            .collect())
    }

    /// Records a pool's desired and current units at `at`.
    pub async fn record_pool_sample(
        self,
        pool: &str,
        at: i64,
        desired: i64,
        current: i64,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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
        self,
        pool: &str,
        since: i64,
    ) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        let owner = self.owner;
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
