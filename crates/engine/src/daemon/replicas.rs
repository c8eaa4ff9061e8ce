//! The daemon's side of `data_volume.replicate`: a settled box's replicas
//! are looked at once per `replicate` (its newest home replica says when the
//! next is due, so a restarted daemon does not copy again early), and a
//! round ([`crate::replicate::replicate`]) runs as the box's task when due.
//! The other regions' handles come from the daemon's owner ([`Connect`]:
//! the CLI connects the SDK to each region), made once and kept. Calls in
//! the other regions are not fenced by the box's lease: a daemon that lost
//! it in the middle of a round may still finish its copy, and the extra
//! replica is pruned by the next round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use spotkeeper_cloud::CloudError;
use spotkeeper_cloud::prelude::*;

use super::Daemon;
use super::tasks::{Done, TaskError, TaskResult};
use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::replicate;

/// Makes a handle to a region.
pub type Connect =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Arc<dyn Cloud>, CloudError>> + Send + Sync>;

/// A failed round is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The other regions' handles, made on first use.
#[derive(Default)]
pub struct Regions {
    connect: Option<Connect>,
    made: tokio::sync::Mutex<HashMap<String, Arc<dyn Cloud>>>,
}

impl std::fmt::Debug for Regions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regions")
            .field("connect", &self.connect.is_some())
            .finish_non_exhaustive()
    }
}

impl Regions {
    /// Handles made with `connect`.
    pub fn new(connect: Connect) -> Self {
        Self {
            connect: Some(connect),
            made: tokio::sync::Mutex::default(),
        }
    }

    pub(super) async fn get(&self, region: &str) -> Result<Arc<dyn Cloud>, String> {
        let connect = self
            .connect
            .as_ref()
            .ok_or("this daemon was started without handles to other regions")?;
        let mut made = self.made.lock().await;
        if let Some(c) = made.get(region) {
            return Ok(c.clone());
        }
        let c = connect(region.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        made.insert(region.to_owned(), c.clone());
        Ok(c)
    }
}

impl Daemon<'_> {
    /// Whether `spec`'s replicas should be looked at now.
    pub(super) fn replication_due(&self, spec: &BoxSpec) -> bool {
        if spec
            .data_volume
            .as_ref()
            .and_then(|v| v.replicate)
            .is_none()
            || spec.other_regions().is_empty()
        {
            return false;
        }
        let now = self.clock.now();
        self.lock_memory()
            .replica_checks
            .get(&spec.name)
            .is_none_or(|at| *at <= now)
    }

    fn next_replica_check(&self, name: &str, at: SystemTime) {
        self.lock_memory()
            .replica_checks
            .insert(name.to_owned(), at);
    }

    /// The box's task: a round when its newest replica is older than
    /// `replicate`, else only the time of the next look.
    pub(super) async fn replicate(&self, spec: &BoxSpec) -> TaskResult {
        let Some((vs, every)) = spec
            .data_volume
            .as_ref()
            .and_then(|v| Some((v, v.replicate?)))
        else {
            return Ok(Done::default());
        };
        let name = spec.name.as_str();
        let now = self.clock.now();
        // Whatever happens below, not again before the retry time.
        self.next_replica_check(name, now + RETRY_AFTER);
        let newest = replicate::replicas(&self.cloud, &self.config.owner, &vs.name)
            .await
            .map_err(|e| TaskError::failed(EventKind::ReplicateFailed, e))?
            .first()
            .map(|r| r.taken_at);
        let unix = crate::store::unix_seconds(now);
        let every_secs = i64::try_from(every.as_secs()).unwrap_or(i64::MAX);
        let handles = self.region_handles(spec).await;
        let others: Vec<(String, &dyn Cloud)> = handles
            .iter()
            .map(|(r, c)| (r.clone(), c.as_ref()))
            .collect();
        if let Some(taken) = newest
            && taken.saturating_add(every_secs) > unix
        {
            let wait = u64::try_from(taken + every_secs - unix).unwrap_or(0);
            let copying = self.note_recovery(spec, &vs.name, &others).await;
            // A copy under way is looked at again soon: it becomes the
            // recovery point when it completes.
            let wait = if copying {
                wait.min(COPYING_LOOK)
            } else {
                wait
            };
            self.next_replica_check(name, now + Duration::from_secs(wait));
            return Ok(Done::default());
        }
        let done = match replicate::replicate(&self.cloud, &others, &self.config.owner, spec, unix)
            .await
        {
            Ok(round) => {
                self.next_replica_check(name, now + Duration::from_secs(COPYING_LOOK).min(every));
                let what = round.describe(&vs.name);
                self.record(Some(name), EventKind::Replicated, &what).await;
                for (region, why) in &round.failed {
                    let failed = format!("copying {} to {region} failed: {why}", vs.name);
                    self.record(Some(name), EventKind::ReplicateFailed, &failed)
                        .await;
                }
                Ok(Done::said(what))
            }
            Err(e) => Err(TaskError::failed(EventKind::ReplicateFailed, e)),
        };
        self.note_recovery(spec, &vs.name, &others).await;
        done
    }

    /// A new image of `spec`'s box, copied to its other regions (each pruned
    /// to `images.keep`), so `image = "box:latest"` has it there too.
    pub(super) async fn copy_image_to_regions(
        &self,
        spec: &BoxSpec,
        image: &spotkeeper_cloud::Image,
        now: SystemTime,
    ) {
        if spec.other_regions().is_empty() {
            return;
        }
        let handles = self.region_handles(spec).await;
        let others: Vec<(String, &dyn Cloud)> = handles
            .iter()
            .map(|(r, c)| (r.clone(), c.as_ref()))
            .collect();
        let (copies, failed) = crate::images::copy_to_regions(
            &others,
            self.cloud.region(),
            &self.config.owner,
            spec,
            image,
            now,
        )
        .await;
        let name = Some(spec.name.as_str());
        if !copies.is_empty() {
            let to: Vec<String> = copies.iter().map(|(r, id)| format!("{r} {id}")).collect();
            let what = format!("copied image {} to {}", image.id, to.join(", "));
            self.record(name, EventKind::Image, &what).await;
        }
        for (region, why) in failed {
            let what = format!("copying image {} to {region} failed: {why}", image.id);
            self.record(name, EventKind::ImageFailed, &what).await;
        }
    }

    /// Handles to `spec`'s other regions; one that cannot be made is said.
    pub(super) async fn region_handles(&self, spec: &BoxSpec) -> Vec<(String, Arc<dyn Cloud>)> {
        let mut handles = Vec::new();
        for region in spec.other_regions() {
            match self.regions.get(region).await {
                Ok(c) => handles.push((region.clone(), c)),
                Err(e) => {
                    let what = format!("no handle to {region}: {e}");
                    self.record(Some(&spec.name), EventKind::ReplicateFailed, &what)
                        .await;
                }
            }
        }
        handles
    }

    /// Reads each other region's replicas for the API's recovery points;
    /// true when a copy is under way somewhere.
    async fn note_recovery(
        &self,
        spec: &BoxSpec,
        volume: &str,
        others: &[(String, &dyn Cloud)],
    ) -> bool {
        let mut points = Vec::new();
        for (region, cloud) in others {
            match replicate::replicas(*cloud, &self.config.owner, volume).await {
                Ok(all) => points.push(super::seen::RegionPoint {
                    region: region.clone(),
                    taken_at: all.iter().find(|r| r.completed).map(|r| r.taken_at),
                    copying: all.first().is_some_and(|r| !r.completed),
                }),
                Err(e) => {
                    tracing::warn!(box_name = %spec.name, "reading the replicas in {region}: {e}")
                }
            }
        }
        let copying = points.iter().any(|p| p.copying);
        self.seen.set_recovery(&spec.name, points);
        copying
    }
}

/// While a copy is under way its region is looked at this often (seconds).
const COPYING_LOOK: u64 = 300;
