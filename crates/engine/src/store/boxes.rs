//! Managed boxes: registration, the stop jobs that take a box down step by
//! step (resumed by any daemon), and instances marked as going away.

use super::*;

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

/// A box's stop job ([`OwnerStore::request_stop`]).
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

impl OwnerStore<'_> {
    /// Makes a box managed (or updates how it is).
    pub async fn register_box(
        self,
        name: &str,
        source: &str,
        spec: Option<&str>,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn ensure_managed(self, name: &str, source: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn deregister_box(self, name: &str) -> Result<bool, StoreError> {
        let owner = self.owner;
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
    pub async fn request_stop(self, name: &str) -> Result<StopJob, StoreError> {
        let owner = self.owner;
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
        self.stop_job(name)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Box `name`'s stop job, open or the last one done.
    pub async fn stop_job(self, name: &str) -> Result<Option<StopJob>, StoreError> {
        let owner = self.owner;
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
    pub async fn open_stops(self) -> Result<Vec<String>, StoreError> {
        let owner = self.owner;
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
    pub async fn stop_step(self, name: &str, step: &str, what: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn stop_failed(self, name: &str, why: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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
    pub async fn stop_done(self, name: &str) -> Result<(), StoreError> {
        let owner = self.owner;
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

    /// The managed boxes, by name.
    pub async fn managed_boxes(self) -> Result<Vec<ManagedBox>, StoreError> {
        let owner = self.owner;
        Ok(sqlx::query_as::<_, ManagedBox>("SELECT name, source, spec, registered_at FROM managed_boxes WHERE owner = $1 ORDER BY name")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Marks an instance of `subject` (a box, or a pool's member) as going
    /// away: it no longer counts as the live box or as the pool's capacity.
    pub async fn doom(
        self,
        subject: &crate::subject::Subject,
        instance: &str,
        reason: crate::event_kind::EventKind,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
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

    /// Instances marked as going away, with when (unix seconds) and why
    /// (an [`EventKind`](crate::event_kind::EventKind)'s word).
    pub async fn doomed_since(self) -> Result<Vec<(String, i64, String)>, StoreError> {
        let owner = self.owner;
        Ok(
            sqlx::query_as("SELECT instance_id, at, reason FROM doomed_instances WHERE owner = $1")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Instances marked as going away.
    pub async fn doomed(self) -> Result<Vec<String>, StoreError> {
        let owner = self.owner;
        Ok(
            sqlx::query_scalar("SELECT instance_id FROM doomed_instances WHERE owner = $1")
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
