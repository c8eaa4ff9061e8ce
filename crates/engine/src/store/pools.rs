//! Worker pools: registration and deletion (with the configs that agree
//! on it), launch intents per pool, and each pool's last plan.

use super::*;

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
}

impl OwnerStore<'_> {
    /// Records that pool `pool` was deleted (`how`: "api" or "config"): its
    /// instances may be collected.
    pub async fn pool_deleted(self, pool: &str, how: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn deleted_pools(self) -> Result<Vec<String>, StoreError> {
        let owner = self.owner;
        Ok(
            sqlx::query_scalar("SELECT pool FROM deleted_pools WHERE owner = $1 ORDER BY pool")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A pool registered again is no longer deleted.
    pub async fn pool_revived(self, pool: &str) -> Result<(), StoreError> {
        let owner = self.owner;
        sqlx::query("DELETE FROM deleted_pools WHERE owner = $1 AND pool = $2")
            .bind(owner)
            .bind(pool)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the pools of the config file; returns those recorded before
    /// that are no longer in it (removed from the file: deleted).
    pub async fn config_pools(self, now: &[String]) -> Result<Vec<String>, StoreError> {
        let owner = self.owner;
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

    /// Registers (or replaces) a pool sent through the API.
    pub async fn register_pool(self, name: &str, spec: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn deregister_pool(self, name: &str) -> Result<bool, StoreError> {
        let owner = self.owner;
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
    pub async fn pools(self) -> Result<Vec<(String, String)>, StoreError> {
        let owner = self.owner;
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
    pub async fn create_pool_launch(self, launch: &PoolLaunch) -> Result<PoolLaunch, StoreError> {
        let owner = self.owner;
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
        self.fenced_commit(tx).await?;
        Ok(PoolLaunch {
            id: row.try_get("id")?,
            ..launch.clone()
        })
    }

    /// Pool launches recorded but never closed (a crash in between).
    pub async fn open_pool_launches(self, pool: &str) -> Result<Vec<PoolLaunch>, StoreError> {
        let owner = self.owner;
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
        self,
        pool: &str,
        since: i64,
    ) -> Result<Vec<(PoolLaunch, Vec<String>)>, StoreError> {
        let owner = self.owner;
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
    pub async fn save_pool_status(self, status: &PoolStatus) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn pool_status(self, pool: Option<&str>) -> Result<Vec<PoolStatus>, StoreError> {
        let owner = self.owner;
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
}
