//! The single spot box: `up` (find or launch, wait, check ready), `stop`
//! (mark, cancel, terminate, wait), `list` and `prices`. Every AWS call goes
//! through the [`Cloud`] trait; the launch intent is written to the store
//! before the launch call.
//!
//! - this module: the context ([`Ctx`]), errors, `up` and its entry points;
//! - `launch`: `up`'s steps (volumes, offerings, intent, launch, the race);
//! - `settle`: what follows `running` (volumes, Elastic IP, ready, DNS);
//! - `stop`: `stop` and what follows it.

pub mod agent_install;
mod choose;
mod launch;
mod settle;
mod stop;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Cloud, CloudError, ImageId, Instance, InstanceId, InstanceState, Market, SpotPrice,
    SpotRequestId,
};

use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::lock::lock_box;
use crate::plan::{self, NoOffering};
use crate::ready::ReadyError;
use crate::store::{Store, StoreError};

pub use crate::ownership::{box_filter, keeper, launch_tags, owner_filter};
pub use crate::progress::{Progress, Silent};
pub use choose::Weighed;
pub use launch::launch_image;
pub use stop::{finish_stop, stop, wait_terminated};

use crate::ownership::live;

/// How long to wait for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Pause between two describes while waiting.
    pub poll: Duration,
    /// Launch call to `running`: spot fulfilment usually takes well under a
    /// minute, but a busy zone can hold a request open for several.
    pub running_timeout: Duration,
    /// Terminate call to `shutting-down`/`terminated`.
    pub stop_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(2),
            running_timeout: Duration::from_secs(10 * 60),
            stop_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// Everything the box operations need.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The cloud.
    pub cloud: &'a dyn Cloud,
    /// The state file.
    pub store: &'a Store,
    /// Value of the owner tag.
    pub owner: &'a str,
    /// Directory of the per-box lock files.
    pub lock_dir: &'a std::path::Path,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Waits.
    pub timing: Timing,
}

impl<'a> Ctx<'a> {
    /// The store as the owner sees it.
    pub fn owned(&self) -> crate::store::OwnerStore<'a> {
        self.store.for_owner(self.owner)
    }
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("owner", &self.owner)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// Why a box operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    /// No offering at or under the ceiling: nothing was launched.
    #[error(transparent)]
    NoOffering(#[from] NoOffering),
    /// An AWS call failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The state file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A pool pass failed (the daemon runs boxes and pools alike).
    #[error(transparent)]
    Pool(#[from] crate::pools::PoolError),
    /// The lock file could not be taken.
    #[error("cannot lock box {box_name} ({path}): {source}")]
    Lock {
        /// Box.
        box_name: String,
        /// Lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Every candidate offering failed for capacity.
    #[error("no capacity: every offering at or under the ceiling failed ({tried})")]
    NoCapacity {
        /// What was tried and why it failed.
        tried: String,
    },
    /// The box's volumes pin it to a zone none of its subnets is in.
    #[error(
        "the box's volumes are in {zone}, where none of its subnets ({subnets}) is: add a subnet there, or set move_volume = true"
    )]
    NoSubnetThere {
        /// The volumes' zone.
        zone: String,
        /// The box's subnets.
        subnets: String,
    },
    /// The instance ended while we waited for it to run.
    #[error(
        "instance {id} ended ({state}) before it was running; AWS may have reclaimed the spot capacity"
    )]
    EndedEarly {
        /// Instance.
        id: InstanceId,
        /// State seen.
        state: InstanceState,
    },
    /// A wait ran out.
    #[error("timed out after {}: {what}", humantime::format_duration(*.after))]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A persistent volume step failed.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    /// The boot script could not be generated.
    #[error(transparent)]
    Boot(#[from] crate::bootstrap::BootError),
    /// The DNS step failed.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    /// The box's stop is under way (asked through the API, or a `stop`
    /// that did not finish): it is not brought up meanwhile.
    #[error(
        "box {box_name} is being stopped; `spotkeeper stop {box_name}` finishes that (a running daemon does too), then `up` starts it again"
    )]
    Stopping {
        /// The box.
        box_name: String,
    },
    /// A move to or from another region cannot be made.
    #[error("box {box_name} cannot move between regions: {why}")]
    Failover {
        /// The box.
        box_name: String,
        /// Why.
        why: String,
    },
    /// The box runs but its ready check failed.
    #[error("instance {id} is running but not ready: {source}")]
    NotReady {
        /// Instance.
        id: InstanceId,
        /// The check's failure.
        #[source]
        source: ReadyError,
    },
}

impl BoxError {
    /// Whether the daemon stopped because it no longer holds the box's (or
    /// pool's) lease ([`crate::fence`]): not a failure of the box, another
    /// daemon acts on it now.
    pub fn fenced(&self) -> bool {
        let cloud = match self {
            Self::Cloud(c)
            | Self::Persist(crate::persist::PersistError::Cloud(c))
            | Self::Dns(crate::dns::DnsError::Cloud(c))
            | Self::Pool(crate::pools::PoolError::Cloud(c)) => Some(c),
            _ => None,
        };
        cloud.is_some_and(crate::fence::is_fenced)
            || matches!(
                self,
                Self::Store(StoreError::Fenced(_))
                    | Self::Pool(crate::pools::PoolError::Store(StoreError::Fenced(_)))
            )
    }
}

/// The result of `up`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpOutcome {
    /// The box's instance, as last described.
    pub instance: Instance,
    /// Whether this `up` launched it (false: it existed already).
    pub launched: bool,
}

/// The result of `stop`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StopOutcome {
    /// Instances told to terminate.
    pub terminated: Vec<InstanceId>,
    /// Spot requests cancelled.
    pub cancelled: Vec<SpotRequestId>,
}

/// Where a box may launch: a zone, and the subnet to launch into there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Place {
    /// The zone.
    pub zone: String,
    /// The box's subnet in that zone; `None`: the default VPC.
    pub subnet: Option<String>,
}

/// The places a box may use: the zones of its subnets (the first subnet of
/// each zone; with `zones` set too, only those zones), else its `zones`,
/// else every zone of the region.
pub(crate) async fn places(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<Vec<Place>, CloudError> {
    if !spec.subnets.is_empty() {
        let mut out: Vec<Place> = Vec::new();
        for subnet in &spec.subnets {
            let zone = ctx.cloud.subnet_zone(subnet).await?;
            let allowed = spec.launch.zones.as_ref().is_none_or(|z| z.contains(&zone));
            if allowed && !out.iter().any(|p| p.zone == zone) {
                out.push(Place {
                    zone,
                    subnet: Some(subnet.clone()),
                });
            }
        }
        return Ok(out);
    }
    let zones = match &spec.launch.zones {
        Some(z) => z.clone(),
        None => ctx.cloud.zones().await?,
    };
    Ok(zones
        .into_iter()
        .map(|zone| Place { zone, subnet: None })
        .collect())
}

/// The zones a box may use (see [`places`]).
async fn allowed_zones(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<Vec<String>, CloudError> {
    Ok(places(ctx, spec)
        .await?
        .into_iter()
        .map(|p| p.zone)
        .collect())
}

/// Current spot prices of `types` in `zones` (every zone when empty), cheapest first.
pub async fn prices(
    cloud: &dyn Cloud,
    types: &[String],
    zones: &[String],
) -> Result<Vec<SpotPrice>, CloudError> {
    let mut p = cloud.spot_prices(types, zones).await?;
    plan::sort_prices(&mut p, types);
    Ok(p)
}

/// Current spot prices of a box's allowed (type, zone) pairs, cheapest first.
pub async fn box_prices(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<Vec<SpotPrice>, CloudError> {
    let zones = allowed_zones(ctx, spec).await?;
    let mut p = ctx.cloud.spot_prices(&spec.instance_types, &zones).await?;
    p.retain(|x| zones.contains(&x.zone));
    plan::sort_prices(&mut p, &spec.instance_types);
    // Kept for `cost` and the price charts, like the daemon's reads.
    if let Err(e) = ctx.store.record_prices(&p, crate::store::unix_now()).await {
        tracing::warn!("keeping the spot prices read failed: {e}");
    }
    Ok(p)
}

/// The live instance of a box (the oldest, should there be duplicates).
pub async fn live_instance(
    cloud: &dyn Cloud,
    owner: &str,
    box_name: &str,
) -> Result<Option<Instance>, CloudError> {
    let all = live(cloud.instances(&box_filter(owner, box_name)).await?);
    Ok(keeper(&all).cloned())
}

/// Every live instance this owner has, by box then launch time.
pub async fn list(cloud: &dyn Cloud, owner: &str) -> Result<Vec<Instance>, CloudError> {
    Ok(live_sorted(cloud.instances(&owner_filter(owner)).await?))
}

/// The live ones of `instances`, by box then launch time (the oldest of a
/// box first: the one kept, should there be duplicates).
pub fn live_sorted(instances: impl IntoIterator<Item = Instance>) -> Vec<Instance> {
    let mut all: Vec<Instance> = instances
        .into_iter()
        .filter(|i| i.state.is_live())
        .collect();
    all.sort_by(|a, b| {
        (a.tag(tags::BOX), a.launched_at, &a.id).cmp(&(b.tag(tags::BOX), b.launched_at, &b.id))
    });
    all
}

/// Brings a box up: finds its live instance or open request, or launches one
/// at the cheapest allowed offering under the ceiling; then waits for
/// `running` and for the ready check.
pub async fn up(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<UpOutcome, BoxError> {
    up_avoiding(ctx, spec, &Avoid::default()).await
}

/// What a replacement must not use: instances about to go away (they are not
/// the live box) and (type, zone) offerings that just failed or were
/// interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Avoid {
    /// Instances that do not count as the box's live instance.
    pub instances: HashSet<InstanceId>,
    /// Spot offerings not to launch in (interrupted or refused lately).
    pub offerings: HashSet<spotkeeper_cloud::Offering>,
}

/// What the daemon knows about a box from its last observation: with it, a
/// replacement after a spot warning goes straight to the launch call instead
/// of first describing the box's instances, requests, zones, prices and image
/// (ten calls, half a second). The daemon's next pass verifies the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// The image to launch (aliases resolved).
    pub image: ImageId,
    /// The zones the box may use.
    pub zones: Vec<String>,
    /// Spot prices of the box's types in those zones, as last observed.
    pub prices: Vec<SpotPrice>,
    /// The box's persistent volumes by name, as last found (a volume not
    /// here is looked up).
    pub volumes: BTreeMap<String, spotkeeper_cloud::Volume>,
}

/// [`up`], for the daemon: treats `avoid.instances` as gone and skips
/// `avoid.offerings`. The box becomes (stays) managed.
pub async fn up_avoiding(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
) -> Result<UpOutcome, BoxError> {
    up_known(ctx, spec, avoid, None).await
}

/// [`up_avoiding`] from what the daemon `known`s: no describe before the
/// launch call when the box has no volume (the launch re-checks by tag after
/// the call, as every launch does).
pub async fn up_known(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    known: Option<&Known>,
) -> Result<UpOutcome, BoxError> {
    // One `up` or `stop` of a box at a time on this machine; the box is
    // registered as managed before the lock is let go.
    let _lock = take_lock(ctx, &spec.name).await?;
    tracing::debug!(box_name = %spec.name, known = known.is_some(), "up: locked");
    // A box being stopped is not brought back until its stop is done.
    if let Some(job) = ctx.owned().stop_job(&spec.name).await?
        && job.open()
    {
        return Err(BoxError::Stopping {
            box_name: spec.name.clone(),
        });
    }
    let outcome = match launch::up_inner(ctx, spec, avoid, known).await {
        Err(e)
            if spec.launch.fallback_on_demand
                && spec.market == Market::Spot
                && spot_unavailable(&e) =>
        {
            let what = format!(
                "No spot capacity for box {} ({e}); falling back to on-demand",
                spec.name
            );
            ctx.progress.note(&what);
            ctx.owned()
                .record_event(Some(&spec.name), EventKind::Fallback, &what)
                .await?;
            let on_demand = BoxSpec {
                market: Market::OnDemand,
                ..spec.clone()
            };
            launch::up_inner(ctx, &on_demand, avoid, None).await?
        }
        other => other?,
    };
    ctx.owned().ensure_managed(&spec.name, "up").await?;
    Ok(outcome)
}

async fn take_lock(ctx: &Ctx<'_>, name: &str) -> Result<crate::lock::BoxLock, BoxError> {
    let on_wait = || {
        ctx.progress.note(&format!(
            "Another spotkeeper is changing box {name}; waiting for it to finish ..."
        ));
    };
    if ctx.store.backend() == crate::store::Backend::Postgres {
        return Ok(ctx.owned().lock_box(name, &on_wait).await?);
    }
    lock_box(ctx.lock_dir, ctx.owner, name, &on_wait)
        .await
        .map_err(|source| BoxError::Lock {
            box_name: name.to_owned(),
            path: ctx.lock_dir.to_path_buf(),
            source,
        })
}

/// Whether a failed spot launch means "no spot to be had now" (so on-demand may stand in).
pub fn spot_unavailable(e: &BoxError) -> bool {
    match e {
        BoxError::NoOffering(_) | BoxError::NoCapacity { .. } => true,
        BoxError::Cloud(c) => c.kind.spot_unavailable(),
        _ => false,
    }
}
