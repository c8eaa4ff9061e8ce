//! Replicas of a box's data volume in its other regions
//! (`regions = [home, …]`, `data_volume.replicate = "1h"`): a snapshot of
//! the volume in the home region, copied to every other region, each region
//! pruned to the volume's `keep`; and the recovery point those copies give
//! (how much a failover to another region now would lose).
//!
//! AWS facts this relies on: a snapshot lives in one region; `CopySnapshot`
//! is called in the destination region and names the source region, and
//! the copy completes later (minutes to hours, by the data changed), so only
//! a completed copy counts for the recovery point; an EBS snapshot holds
//! what was on the volume when it started (crash-consistent, as after a
//! power cut), so a replica's age is counted from its source's start, which
//! the copies carry in [`TAKEN_AT_TAG`]. Every replica is tagged at creation
//! with the owner, the box, the volume and the purpose `replica`: never a
//! stop snapshot (`up` restores from those only), never another owner's.

use std::collections::BTreeMap;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{CloudError, Snapshot, SnapshotId, TagFilter};

use crate::config::BoxSpec;
use crate::persist::{self, PURPOSE_TAG, Role, VOLUME_TAG};

/// The purpose of a replica snapshot ([`PURPOSE_TAG`]).
pub const PURPOSE: &str = "replica";
/// On replicas: when the home snapshot they copy started (Unix seconds).
pub const TAKEN_AT_TAG: &str = "spotkeeper:taken-at";
/// On copies: the home snapshot they copy (`REGION/snap-…`).
pub const COPY_OF_TAG: &str = "spotkeeper:copy-of";

/// Why a round could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The box has no data volume to replicate, or no other region.
    #[error("box {0} replicates nothing: it needs a data_volume and regions beyond its home")]
    Nothing(String),
    /// The handle is not in the box's home region.
    #[error(
        "box {name}'s home region is {home} (the first of its regions) but spotkeeper runs in \
         {running}: set [aws] region = \"{home}\""
    )]
    NotHome {
        /// The box.
        name: String,
        /// Its first region.
        home: String,
        /// The handle's.
        running: String,
    },
    /// The volume was never created (the box never ran).
    #[error("box {0}'s data volume does not exist yet: `up` the box first")]
    NoVolume(String),
    /// AWS refused.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// Finding the volume failed.
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
}

/// A replica in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its region.
    pub region: String,
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// When its data was taken (Unix seconds).
    pub taken_at: i64,
    /// The copy completed (a home snapshot is complete when listed).
    pub completed: bool,
    /// What it copies (`REGION/snap-…`; none for a home snapshot).
    pub copy_of: Option<String>,
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// The snapshot taken in the home region.
    pub source: Option<SnapshotId>,
    /// Its copies, by region.
    pub copies: BTreeMap<String, SnapshotId>,
    /// Regions whose copy failed, and why (the others went on).
    pub failed: BTreeMap<String, String>,
    /// Regions not copied to this round: their last copy is still under way
    /// (AWS limits the copies in flight per destination, and a second copy
    /// of the same volume would not complete sooner).
    pub skipped: Vec<String>,
    /// Older replicas deleted beyond `keep`, all regions.
    pub pruned: usize,
}

impl Round {
    /// "replica snap-… of dev-data copied to us-west-2 snap-… (pruned 1)".
    pub fn describe(&self, volume: &str) -> String {
        let copies: Vec<String> = self
            .copies
            .iter()
            .map(|(r, id)| format!("{r} {id}"))
            .collect();
        let mut said = match &self.source {
            Some(source) => format!(
                "replica {source} of {volume} copied to {} (pruned {})",
                if copies.is_empty() {
                    "no region".to_owned()
                } else {
                    copies.join(", ")
                },
                self.pruned
            ),
            None => format!("no replica of {volume} taken"),
        };
        if !self.skipped.is_empty() {
            said.push_str(&format!(
                "; a copy to {} is still under way",
                self.skipped.join(", ")
            ));
        }
        said
    }
}

/// The tags of a replica of `spec`'s data volume taken at `taken_at`.
fn replica_tags(owner: &str, spec: &BoxSpec, volume: &str, taken_at: i64) -> Vec<(String, String)> {
    vec![
        (tags::OWNER.to_owned(), owner.to_owned()),
        (tags::BOX.to_owned(), spec.name.clone()),
        (VOLUME_TAG.to_owned(), volume.to_owned()),
        (PURPOSE_TAG.to_owned(), PURPOSE.to_owned()),
        (TAKEN_AT_TAG.to_owned(), taken_at.to_string()),
        (tags::NAME.to_owned(), format!("{volume} replica")),
    ]
}

fn filter(owner: &str, volume: &str) -> TagFilter {
    TagFilter::default()
        .with(tags::OWNER, owner)
        .with(VOLUME_TAG, volume)
        .with(PURPOSE_TAG, PURPOSE)
}

fn replica_of(region: &str, s: &Snapshot) -> Option<Replica> {
    Some(Replica {
        region: region.to_owned(),
        snapshot: s.id.clone(),
        taken_at: s.tags.get(TAKEN_AT_TAG)?.parse().ok()?,
        completed: s.state == "completed",
        copy_of: s.tags.get(COPY_OF_TAG).cloned(),
    })
}

/// One round: snapshot the home volume, copy it to every other region
/// (`others`: region and handle) whose last copy has completed, prune every
/// region to `keep`. A region whose copy fails is said in [`Round::failed`];
/// the others go on. Nothing is taken when every region is still copying.
pub async fn replicate(
    home: &dyn Cloud,
    others: &[(String, &dyn Cloud)],
    owner: &str,
    spec: &BoxSpec,
    now: i64,
) -> Result<Round, ReplicateError> {
    let Some(vs) = spec
        .data_volume
        .as_ref()
        .filter(|_| !spec.other_regions().is_empty())
    else {
        return Err(ReplicateError::Nothing(spec.name.clone()));
    };
    let home_region = &spec.regions[0];
    if home.region() != home_region {
        return Err(ReplicateError::NotHome {
            name: spec.name.clone(),
            home: home_region.clone(),
            running: home.region().to_owned(),
        });
    }
    let volume = persist::find(home, owner, &spec.name, Role::Data, vs)
        .await?
        .ok_or_else(|| ReplicateError::NoVolume(spec.name.clone()))?;
    let mut round = Round::default();
    let mut targets: Vec<&(String, &dyn Cloud)> = Vec::new();
    for other in others {
        match replicas(other.1, owner, &vs.name).await {
            Ok(all) if all.first().is_some_and(|r| !r.completed) => {
                round.skipped.push(other.0.clone());
            }
            Ok(_) => targets.push(other),
            Err(e) => {
                round.failed.insert(other.0.clone(), e.to_string());
            }
        }
    }
    if targets.is_empty() {
        return Ok(round);
    }
    let tags = replica_tags(owner, spec, &vs.name, now);
    let source = home.snapshot_volume(&volume.id, &tags).await?;
    round.source = Some(source.clone());
    let mut copy_tags = tags;
    copy_tags.push((COPY_OF_TAG.to_owned(), format!("{home_region}/{source}")));
    for (region, cloud) in targets {
        match cloud.copy_snapshot(home_region, &source, &copy_tags).await {
            Ok(id) => {
                round.copies.insert(region.clone(), id);
            }
            Err(e) => {
                round.failed.insert(region.clone(), e.to_string());
            }
        }
    }
    // The sources of copies still under way stay: AWS fails a copy whose
    // source is deleted before it completes.
    let mut copying = vec![source.to_string()];
    for (region, cloud) in others {
        match prune(*cloud, owner, &vs.name, vs.keep, &[]).await {
            Ok((n, pending)) => {
                round.pruned += n;
                copying.extend(pending);
            }
            Err(e) => {
                round.failed.entry(region.clone()).or_insert(e.to_string());
            }
        }
    }
    round.pruned += prune(home, owner, &vs.name, vs.keep, &copying).await?.0;
    Ok(round)
}

/// Deletes replicas beyond the newest `keep`, never the newest completed
/// one (a newer copy may still be under way: the region keeps a recovery
/// point meanwhile) nor those whose id is in `sources`. Returns how many it
/// deleted and the sources (home snapshot ids) of the copies still pending.
async fn prune(
    cloud: &dyn Cloud,
    owner: &str,
    volume: &str,
    keep: usize,
    sources: &[String],
) -> Result<(usize, Vec<String>), CloudError> {
    let all = replicas(cloud, owner, volume).await?;
    let newest_completed = all.iter().find(|r| r.completed).map(|r| r.snapshot.clone());
    let mut deleted = 0;
    for r in all.iter().skip(keep) {
        if Some(&r.snapshot) != newest_completed.as_ref()
            && !sources.iter().any(|s| s == r.snapshot.as_str())
        {
            cloud.delete_snapshot(&r.snapshot).await?;
            deleted += 1;
        }
    }
    let pending = all
        .iter()
        .filter(|r| !r.completed)
        .filter_map(|r| {
            r.copy_of
                .as_deref()?
                .split_once('/')
                .map(|(_, id)| id.to_owned())
        })
        .collect();
    Ok((deleted, pending))
}

/// The replicas of `spec`'s data volume in one region, newest first.
pub async fn replicas(
    cloud: &dyn Cloud,
    owner: &str,
    volume: &str,
) -> Result<Vec<Replica>, CloudError> {
    let mut all: Vec<Replica> = cloud
        .snapshots(&filter(owner, volume))
        .await?
        .iter()
        .filter_map(|s| replica_of(cloud.region(), s))
        .collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.taken_at));
    Ok(all)
}

/// What a failover to `region` would lose now (seconds): the age of its
/// newest completed replica; `None` when it has none.
pub fn recovery_point(replicas: &[Replica], region: &str, now: i64) -> Option<i64> {
    replicas
        .iter()
        .filter(|r| r.region == region && r.completed)
        .map(|r| now - r.taken_at)
        .min()
}

/// "a failover to us-west-2 now would lose up to 37 min" (or that it has
/// nothing to fail over to).
pub fn describe_recovery_point(region: &str, seconds: Option<i64>) -> String {
    match seconds {
        Some(s) => format!(
            "a failover to {region} now would lose up to {} min",
            (s.max(0) + 59) / 60
        ),
        None => format!("{region} has no completed replica: a failover there has no data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(region: &str, taken_at: i64, completed: bool) -> Replica {
        Replica {
            region: region.into(),
            snapshot: SnapshotId::new(format!("snap-{taken_at}")),
            taken_at,
            completed,
            copy_of: None,
        }
    }

    #[test]
    fn the_recovery_point_is_the_newest_completed_replica_of_that_region() {
        let all = [
            replica("us-west-2", 1_000, true),
            replica("us-west-2", 3_000, false),
            replica("us-west-2", 2_000, true),
            replica("eu-west-1", 2_900, true),
        ];
        assert_eq!(recovery_point(&all, "us-west-2", 4_000), Some(2_000));
        assert_eq!(recovery_point(&all, "eu-west-1", 4_000), Some(1_100));
        assert_eq!(recovery_point(&all, "ap-south-1", 4_000), None);
        assert_eq!(
            describe_recovery_point("us-west-2", Some(2_220)),
            "a failover to us-west-2 now would lose up to 37 min"
        );
        assert!(describe_recovery_point("ap-south-1", None).contains("no completed replica"));
    }
}
