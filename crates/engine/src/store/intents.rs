//! Launch intents: written before the launch call (its client token and
//! target), given the instance once AWS names it, closed when the instance
//! is seen gone. A crash between the call and the record repeats the call
//! with the same token instead of launching twice.

use super::*;

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

impl Store {
    /// Records a new open intent. Within a daemon's task (a fence in
    /// scope), the same statement checks that the daemon still holds the
    /// box's lease at the generation it planned under: a daemon that lost
    /// it records no launch (and so makes none). One statement, so one
    /// round trip and one commit (one fsync on SQLite): this is the write a
    /// warning's replacement waits for before its launch call.
    pub async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, StoreError> {
        let created_at = unix_now();
        let fence = crate::fence::current();
        let held = match &fence {
            Some(_) => format!(
                " WHERE EXISTS (SELECT 1 FROM leases WHERE {})",
                self.lease_held_sql(9)
            ),
            None => String::new(),
        };
        let sql = format!(
            "INSERT INTO intents (owner, box, generation, token, market, instance_type, zone, created_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8{held} RETURNING id"
        );
        let insert = sqlx::query_scalar(&sql)
            .bind(new.owner)
            .bind(new.box_name)
            .bind(new.generation)
            .bind(new.token)
            .bind(new.market.as_str())
            .bind(new.instance_type)
            .bind(new.zone)
            .bind(created_at);
        let id: Option<i64> = match &fence {
            Some(f) => leases::bind_fence(insert, f),
            None => insert,
        }
        .fetch_optional(&self.pool)
        .await?;
        let id = match (id, fence) {
            (Some(id), _) => id,
            (None, Some(fence)) => return Err(StoreError::Fenced(fence)),
            // Unfenced, the insert returns its row.
            (None, None) => return Err(sqlx::Error::RowNotFound.into()),
        };
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
}

impl OwnerStore<'_> {
    /// The box's open intent (not yet closed), if any.
    pub async fn open_intent(self, box_name: &str) -> Result<Option<Intent>, StoreError> {
        let owner = self.owner;
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
    pub async fn next_generation(self, box_name: &str) -> Result<i64, StoreError> {
        let owner = self.owner;
        let max: Option<i64> =
            sqlx::query_scalar("SELECT MAX(generation) FROM intents WHERE owner = $1 AND box = $2")
                .bind(owner)
                .bind(box_name)
                .fetch_one(&self.pool)
                .await?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Closes every open intent of a box.
    pub async fn close_box_intents(
        self,
        box_name: &str,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let owner = self.owner;
        sqlx::query("UPDATE intents SET closed_at = $1, outcome = $2 WHERE owner = $3 AND box = $4 AND closed_at IS NULL")
            .bind(unix_now())
            .bind(outcome.as_str())
            .bind(owner)
            .bind(box_name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
