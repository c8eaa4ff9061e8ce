//! The single spot box: `up` (find or launch, wait, check ready), `stop`
//! (mark, cancel, terminate, wait), `list` and `prices`. Every AWS call goes
//! through the [`Cloud`] trait; the launch intent is written to the store
//! before the launch call.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Cloud, CloudError, ErrorKind, ImageId, Instance, InstanceId, InstanceState, LaunchSpec, Market,
    SpotPrice, SpotRequest, SpotRequestId, SpotRequestState, TagFilter,
};
use tokio::time::{Instant, sleep};

use crate::config::BoxSpec;
use crate::lock::lock_box;
use crate::persist;
use crate::plan::{self, NoOffering};
use crate::ready::{self, ReadyError};
use crate::store::{Store, StoreError};

/// What `up` and `stop` tell the person at the terminal while they work.
pub trait Progress: Send + Sync {
    /// A finished step, one line.
    fn note(&self, line: &str);
    /// A wait begins (a spinner, say).
    fn start(&self, what: &str);
    /// The current wait ended with `outcome`.
    fn finish(&self, outcome: &str);
}

/// A [`Progress`] that says nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn note(&self, _: &str) {}
    fn start(&self, _: &str) {}
    fn finish(&self, _: &str) {}
}

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

/// Tags that mark a resource as this owner's.
pub fn owner_filter(owner: &str) -> TagFilter {
    TagFilter::default().with(tags::OWNER, owner)
}

/// Tags that mark a resource as this owner's box `box_name`.
pub fn box_filter(owner: &str, box_name: &str) -> TagFilter {
    owner_filter(owner).with(tags::BOX, box_name)
}

/// Live (pending or running) instances of a box that no `stop` has marked.
fn live(instances: Vec<Instance>) -> Vec<Instance> {
    instances
        .into_iter()
        .filter(|i| i.state.is_live() && i.tag(tags::STOPPED).is_none())
        .collect()
}

/// Open spot requests of a box that no `stop` has marked.
fn open_requests(requests: Vec<SpotRequest>) -> Vec<SpotRequest> {
    requests
        .into_iter()
        .filter(|r| r.state == SpotRequestState::Open && r.tag(tags::STOPPED).is_none())
        .collect()
}

/// Of several live instances of one box, the one every racer agrees to keep:
/// the oldest launch, then the smallest id. `up` and the daemon both use it.
pub fn keeper<'i, I>(instances: I) -> Option<&'i Instance>
where
    I: IntoIterator<Item = &'i Instance>,
{
    instances.into_iter().min_by(|a, b| {
        a.launched_at
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .cmp(&b.launched_at.unwrap_or(SystemTime::UNIX_EPOCH))
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// The zones a box may use: its `zones`, its subnet's zone, or every zone of the region.
async fn allowed_zones(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<Vec<String>, CloudError> {
    if let Some(subnet) = &spec.subnet {
        let zone = ctx.cloud.subnet_zone(subnet).await?;
        return Ok(vec![zone]);
    }
    match &spec.zones {
        Some(z) => Ok(z.clone()),
        None => ctx.cloud.zones().await,
    }
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
    let mut all: Vec<Instance> = cloud
        .instances(&owner_filter(owner))
        .await?
        .into_iter()
        .filter(|i| i.state.is_live())
        .collect();
    all.sort_by(|a, b| {
        (a.tag(tags::BOX), a.launched_at, &a.id).cmp(&(b.tag(tags::BOX), b.launched_at, &b.id))
    });
    Ok(all)
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
    /// (instance type, zone) pairs not to launch in.
    pub offerings: HashSet<(String, String)>,
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
    let outcome = match up_inner(ctx, spec, avoid, known).await {
        Err(e)
            if spec.fallback_on_demand && spec.market == Market::Spot && spot_unavailable(&e) =>
        {
            let what = format!(
                "No spot capacity for box {} ({e}); falling back to on-demand",
                spec.name
            );
            ctx.progress.note(&what);
            ctx.store
                .record_event(ctx.owner, Some(&spec.name), "fallback", &what)
                .await?;
            let on_demand = BoxSpec {
                market: Market::OnDemand,
                ..spec.clone()
            };
            up_inner(ctx, &on_demand, avoid, None).await?
        }
        other => other?,
    };
    ctx.store
        .ensure_managed(ctx.owner, &spec.name, "up")
        .await?;
    Ok(outcome)
}

async fn take_lock(ctx: &Ctx<'_>, name: &str) -> Result<crate::lock::BoxLock, BoxError> {
    lock_box(ctx.lock_dir, ctx.owner, name, &|| {
        ctx.progress.note(&format!(
            "Another spotkeeper is changing box {name}; waiting for it to finish ..."
        ));
    })
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

async fn up_inner(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    known: Option<&Known>,
) -> Result<UpOutcome, BoxError> {
    let name = spec.name.as_str();
    // What the daemon knows holds only while nothing was launched since its
    // observation: an open intent whose instance is not one of the doomed
    // means a launch it has not seen, so look at AWS first.
    // Read once: under the box lock nothing else writes this box's intents.
    let open = ctx.store.open_intent(ctx.owner, name).await?;
    let known = match (known, &open) {
        (Some(_), Some(i))
            if i.instance_id
                .as_ref()
                .is_some_and(|id| !avoid.instances.contains(&InstanceId::new(id.clone()))) =>
        {
            None
        }
        (k, _) => k,
    };
    // Check what would otherwise fail half way, before anything is launched.
    if let Some(dns) = &spec.dns
        && known.is_none()
    {
        crate::dns::check(ctx.cloud, ctx.owner, name, dns).await?;
    }
    if let Some(alloc) = &spec.elastic_ip
        && known.is_none()
    {
        elastic_ip_reassociation(ctx, spec, alloc, None).await?;
    }
    let mut found = Vec::new();
    for (role, vs) in persist::volume_specs(spec) {
        let v = match known.and_then(|k| k.volumes.get(&vs.name)) {
            // Where it is (its zone) is what matters before the launch; it
            // is read again when it is attached.
            Some(v) => Some(v.clone()),
            None => persist::find(ctx.cloud, ctx.owner, name, role, vs).await?,
        };
        found.push((role, vs, v));
    }

    let filter = box_filter(ctx.owner, name);
    let mut existing = match known {
        Some(_) => Vec::new(),
        None => live(ctx.cloud.instances(&filter).await?),
    };
    existing.retain(|i| !avoid.instances.contains(&i.id));
    if let Some(keep) = keeper(&existing).cloned() {
        ctx.progress.note(&format!(
            "Instance exists already ({}, {}), we will not be provisioning another one",
            keep.id, keep.state
        ));
        terminate_extras(ctx, name, &existing, &keep).await?;
        let instance = wait_running(ctx, &keep.id).await?;
        let instance = settle(ctx, spec, instance, &[], &avoid.instances).await?;
        return Ok(UpOutcome {
            instance,
            launched: false,
        });
    }

    if spec.market == Market::Spot
        && known.is_none()
        && let Some(open) = open_requests(ctx.cloud.spot_requests(&filter).await?)
            .into_iter()
            .next()
    {
        ctx.progress.note(&format!(
            "Spot request {} for box {name} is open already; waiting for it",
            open.id
        ));
        let instance = wait_fulfilled(ctx, &open.id).await?;
        let instance = wait_running(ctx, &instance).await?;
        let instance = settle(ctx, spec, instance, &[], &avoid.instances).await?;
        return Ok(UpOutcome {
            instance,
            launched: false,
        });
    }

    // Nothing live: an open intent whose instance we had seen is history now.
    let mut reusable = open;
    if let Some(intent) = &reusable
        && intent.instance_id.is_some()
    {
        ctx.store.close_intent(intent.id, "gone").await?;
        reusable = None;
    }

    let pinned = persist::pinned_zone(
        &found
            .iter()
            .map(|(r, _, v)| (*r, v.clone()))
            .collect::<Vec<_>>(),
        spec.move_volume,
    )?;
    let zones = match &pinned {
        Some(z) => {
            ctx.progress
                .note(&format!("The box's volumes are in {z}; launching there"));
            vec![z.clone()]
        }
        None => match known {
            Some(k) => k.zones.clone(),
            None => allowed_zones(ctx, spec).await?,
        },
    };
    let offerings: Vec<(String, Option<String>, Option<f64>)> = match spec.market {
        Market::Spot => {
            let prices = match known {
                Some(k) => {
                    let mut p = k.prices.clone();
                    p.retain(|x| zones.contains(&x.zone));
                    plan::sort_prices(&mut p, &spec.instance_types);
                    p
                }
                None => box_prices(ctx, spec).await?,
            };
            let under = |unavailable| {
                plan::candidates(
                    &prices,
                    &spec.instance_types,
                    &zones,
                    spec.max_price,
                    unavailable,
                )
            };
            // Every allowed offering interrupted lately: a recently interrupted
            // one beats leaving the box down.
            let chosen = match under(&avoid.offerings) {
                Ok(c) => c,
                Err(_) if !avoid.offerings.is_empty() => {
                    ctx.progress
                        .note("Every allowed offering was interrupted lately; trying them anyway");
                    under(&HashSet::new())?
                }
                Err(e) => return Err(e.into()),
            };
            let best = &chosen[0];
            ctx.progress.note(&format!(
                "Spot price is {} ({} in {}), at or under the ceiling of {} ({}), continuing",
                best.price,
                best.instance_type,
                best.zone,
                spec.max_price,
                match spec.price_cap {
                    crate::config::PriceCap::Spotkeeper =>
                        "held by spotkeeper: a box above it is moved",
                    crate::config::PriceCap::Aws =>
                        "sent to AWS as MaxPrice: AWS interrupts above it",
                }
            ));
            chosen
                .into_iter()
                .map(|p| (p.instance_type, Some(p.zone), Some(p.price)))
                .collect()
        }
        Market::OnDemand => {
            let zone = if spec.subnet.is_some() || spec.zones.is_some() || !found.is_empty() {
                zones.first().cloned()
            } else {
                None
            };
            spec.instance_types
                .iter()
                .map(|t| (t.clone(), zone.clone(), None))
                .collect()
        }
    };

    let image_id = match known {
        Some(k) => k.image.clone(),
        None => launch_image(ctx, spec).await?,
    };
    let mut tried = Vec::new();
    for (instance_type, zone, _price) in offerings {
        // A crashed earlier run left this intent without an instance: reuse its
        // token if it planned the same offering, so AWS returns what it made.
        let intent = match reusable.take() {
            Some(i) if i.instance_type == instance_type && i.zone == zone => {
                ctx.progress.note(&format!(
                    "Resuming an interrupted launch (client token {})",
                    i.token
                ));
                i
            }
            Some(stale) => {
                ctx.store.close_intent(stale.id, "abandoned").await?;
                new_intent(ctx, name, spec.market, &instance_type, zone.as_deref()).await?
            }
            None => new_intent(ctx, name, spec.market, &instance_type, zone.as_deref()).await?,
        };
        let mut prepared = Vec::new();
        if let Some(z) = &zone {
            for (role, vs, existing) in &found {
                let p = persist::prepare(
                    ctx.cloud,
                    ctx.owner,
                    name,
                    *role,
                    vs,
                    existing.as_ref(),
                    z,
                    &image_id,
                )
                .await?;
                match (&p.moved_from, p.fresh) {
                    (Some(old), _) => ctx.progress.note(&format!(
                        "Moved {} {:?} from {} to {z} by snapshot ({} → {})",
                        role.key(),
                        vs.name,
                        old.zone,
                        old.id,
                        p.volume.id
                    )),
                    (None, true) => ctx.progress.note(&format!(
                        "Created {} {:?} ({}) in {z}",
                        role.key(),
                        vs.name,
                        p.volume.id
                    )),
                    (None, false) => {}
                }
                prepared.push(p);
            }
        }
        let user_data = crate::bootstrap::user_data(
            name,
            &boot_volumes(spec, &prepared),
            spec.user_data.as_deref(),
        )?;
        // Names are looked up in the subnet's (or the default) VPC; ids pass.
        let security_group_ids = ctx
            .cloud
            .security_group_ids(&spec.security_groups, spec.subnet.as_deref())
            .await?;
        let launch = LaunchSpec {
            image_id: image_id.clone(),
            instance_type: instance_type.clone(),
            market: spec.market,
            zone: if spec.subnet.is_some() {
                None
            } else {
                zone.clone()
            },
            subnet_id: spec.subnet.clone(),
            security_group_ids,
            key_name: spec.key_name.clone(),
            user_data,
            tags: launch_tags(ctx.owner, spec, &intent.token),
            client_token: intent.token.clone(),
            root_volume: spec.root_disk.clone(),
            iam_instance_profile: spec.iam_instance_profile.clone(),
            spot_max_price: (spec.market == Market::Spot
                && spec.price_cap == crate::config::PriceCap::Aws)
                .then_some(spec.max_price),
        };
        tracing::debug!(box_name = name, token = %intent.token, "launch call");
        ctx.progress.start(&format!(
            "Requesting a {} {} instance in {}",
            spec.market,
            instance_type,
            zone.as_deref().unwrap_or("any zone")
        ));
        let instance = match ctx.cloud.launch(&launch).await {
            Ok(i) => i,
            Err(e) if e.kind.offering_unavailable() => {
                ctx.progress.finish(&format!("no capacity ({e})"));
                for p in &prepared {
                    persist::discard(ctx.cloud, p).await?;
                }
                // AWS refused: nothing exists for this token.
                ctx.store.close_intent(intent.id, "no-capacity").await?;
                ctx.store
                    .record_event(ctx.owner, Some(name), "launch-failed", &e.to_string())
                    .await?;
                tried.push(format!(
                    "{instance_type} in {}: {}",
                    zone.as_deref().unwrap_or("any zone"),
                    e.code.as_deref().unwrap_or("?")
                ));
                continue;
            }
            Err(e) => {
                ctx.progress.finish("failed");
                // Without an answer we cannot know whether AWS launched: keep the
                // intent open so the next run reuses its token.
                if !e.kind.outcome_unknown() {
                    ctx.store.close_intent(intent.id, "failed").await?;
                    for p in &prepared {
                        persist::discard(ctx.cloud, p).await?;
                    }
                }
                ctx.store
                    .record_event(ctx.owner, Some(name), "launch-failed", &e.to_string())
                    .await?;
                return Err(e.into());
            }
        };
        ctx.store
            .set_intent_instance(intent.id, instance.id.as_str())
            .await?;
        let via = instance
            .spot_request_id
            .as_ref()
            .map(|r| format!(" (spot request {r})"))
            .unwrap_or_default();
        ctx.progress
            .finish(&format!("launched {}{via}", instance.id));
        ctx.store
            .record_event(
                ctx.owner,
                Some(name),
                "launch",
                &format!(
                    "launched {} ({} {} in {})",
                    instance.id,
                    spec.market,
                    instance_type,
                    zone.as_deref().unwrap_or("?")
                ),
            )
            .await?;

        // Another machine may have launched the same box at the same moment:
        // every racer keeps the oldest and terminates its own if it lost.
        let mut live_now = live(ctx.cloud.instances(&filter).await?);
        live_now.retain(|i| !avoid.instances.contains(&i.id));
        if !live_now.iter().any(|i| i.id == instance.id) {
            live_now.push(instance.clone());
        }
        let keep = keeper(&live_now)
            .cloned()
            .unwrap_or_else(|| instance.clone());
        if keep.id != instance.id {
            ctx.progress.note(&format!(
                "Another launch of box {name} won the race ({}); terminating ours ({})",
                keep.id, instance.id
            ));
            mark_stopped(ctx, &[instance.id.as_str().to_owned()]).await?;
            ctx.cloud
                .terminate(std::slice::from_ref(&instance.id))
                .await?;
            ctx.store.close_intent(intent.id, "lost-race").await?;
            for p in &prepared {
                persist::discard(ctx.cloud, p).await?;
            }
            let instance = wait_running(ctx, &keep.id).await?;
            let instance = settle(ctx, spec, instance, &[], &avoid.instances).await?;
            return Ok(UpOutcome {
                instance,
                launched: false,
            });
        }
        let instance = wait_running(ctx, &instance.id).await?;
        let instance = settle(ctx, spec, instance, &prepared, &avoid.instances).await?;
        return Ok(UpOutcome {
            instance,
            launched: true,
        });
    }
    Err(BoxError::NoCapacity {
        tried: tried.join("; "),
    })
}

/// The image to launch: the box's newest image when the config asks for it
/// and one exists, else the configured image (aliases resolved now).
pub async fn launch_image(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<ImageId, BoxError> {
    if spec.image_from_box {
        if let Some(img) = crate::images::latest(ctx.cloud, ctx.owner, &spec.name).await? {
            ctx.progress
                .note(&format!("Launching from the box's newest image {}", img.id));
            return Ok(img.id);
        }
        ctx.progress.note(&format!(
            "Box {} has no image yet; launching from {}",
            spec.name, spec.image
        ));
    }
    let id = ctx.cloud.resolve_image(&spec.image).await?;
    if !matches!(spec.image, spotkeeper_cloud::ImageRef::Id(_)) {
        ctx.progress.note(&format!("Image {} is {id}", spec.image));
    }
    Ok(id)
}

fn boot_volumes(spec: &BoxSpec, prepared: &[persist::Prepared]) -> crate::bootstrap::BootVolumes {
    let mut b = crate::bootstrap::BootVolumes::default();
    for p in prepared {
        match p.role {
            persist::Role::Data => {
                let mount = spec
                    .data_volume
                    .as_ref()
                    .map(|d| d.mount.clone())
                    .unwrap_or_default();
                b.data = Some(crate::bootstrap::BootData {
                    volume: p.volume.id.to_string(),
                    device: p.role.device().to_owned(),
                    mount,
                    new: p.volume.tags.contains_key(persist::NEW_TAG),
                });
            }
            persist::Role::Root => {
                b.root = Some((p.volume.id.to_string(), p.role.device().to_owned()))
            }
        }
    }
    b
}

/// What follows `running`: attach the volumes (or heal a missed attach),
/// associate the Elastic IP, wait for the ready check, point DNS at the box.
async fn settle(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    mut instance: Instance,
    prepared: &[persist::Prepared],
    doomed: &HashSet<InstanceId>,
) -> Result<Instance, BoxError> {
    if prepared.is_empty() {
        for note in persist::ensure_attached(ctx.cloud, ctx.owner, spec, &instance, doomed).await? {
            ctx.progress.note(&note);
        }
    }
    for p in prepared {
        ctx.progress.start(&format!(
            "Attaching {} {} at {}",
            p.role.key(),
            p.volume.id,
            p.role.device()
        ));
        persist::attach(ctx.cloud, ctx.owner, p, &instance.id, doomed).await?;
        ctx.progress.finish("attached.");
    }
    if let Some(alloc) = &spec.elastic_ip {
        let reassociate = elastic_ip_reassociation(ctx, spec, alloc, Some(&instance.id)).await?;
        ctx.cloud
            .associate_address(alloc, &instance.id, reassociate)
            .await?;
        if let Some(fresh) = ctx.cloud.instance(&instance.id).await? {
            instance = fresh;
        }
        ctx.progress.note(&format!(
            "Associated {alloc} with {} ({})",
            instance.id,
            instance.public_ip.as_deref().unwrap_or("?")
        ));
    }
    check_ready(ctx, spec, &instance).await?;
    // The box got ready on its data volume: from now on the boot script
    // never makes a filesystem on it.
    let used: Vec<String> = prepared
        .iter()
        .filter(|p| p.role == persist::Role::Data && p.volume.tags.contains_key(persist::NEW_TAG))
        .map(|p| p.volume.id.to_string())
        .collect();
    if !used.is_empty() {
        ctx.cloud.untag(&used, &[persist::NEW_TAG]).await?;
    }
    if let Some(dns) = &spec.dns {
        let address = crate::dns::point(ctx.cloud, ctx.owner, &spec.name, dns, &instance).await?;
        ctx.progress.note(&format!("DNS {} → {address}", dns.name));
        ctx.store
            .record_event(
                ctx.owner,
                Some(&spec.name),
                "dns",
                &format!("{} → {address} ({})", dns.name, instance.id),
            )
            .await?;
    }
    Ok(instance)
}

async fn new_intent(
    ctx: &Ctx<'_>,
    name: &str,
    market: Market,
    instance_type: &str,
    zone: Option<&str>,
) -> Result<crate::store::Intent, StoreError> {
    let generation = ctx.store.next_generation(ctx.owner, name).await?;
    let token = plan::client_token(ctx.owner, name, generation, market, instance_type, zone);
    ctx.store
        .create_intent(
            ctx.owner,
            name,
            generation,
            &token,
            market.as_str(),
            instance_type,
            zone,
        )
        .await
}

/// Whether associating the box's Elastic IP must take it from another
/// instance: from the box's own (old) instances, yes; from anyone else's only
/// when the config adopts the address, else an error (before the launch, when
/// `instance` is `None`).
async fn elastic_ip_reassociation(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    alloc: &str,
    instance: Option<&InstanceId>,
) -> Result<bool, BoxError> {
    let holder = match ctx.cloud.address_holder(alloc).await? {
        None => return Ok(false),
        Some(h) if Some(&h) == instance => return Ok(false),
        Some(h) => h,
    };
    let ours = ctx.cloud.instance(&holder).await?.is_some_and(|h| {
        h.tag(tags::OWNER) == Some(ctx.owner) && h.tag(tags::BOX) == Some(spec.name.as_str())
    });
    if !ours && !spec.adopt_elastic_ip {
        return Err(BoxError::Cloud(CloudError::other(
            "AssociateAddress",
            ErrorKind::InvalidRequest,
            format!(
                "Elastic IP {alloc} is on {holder}, which is not box {}'s; \
                 set adopt_elastic_ip = true to let spotkeeper take it",
                spec.name
            ),
        )));
    }
    Ok(true)
}

/// Tags set at creation on the instance, its volumes and its spot request.
pub fn launch_tags(owner: &str, spec: &BoxSpec, token: &str) -> BTreeMap<String, String> {
    let mut t = spec.tags.clone();
    t.insert(tags::NAME.into(), format!("spotkeeper-{}", spec.name));
    t.insert(tags::OWNER.into(), owner.into());
    t.insert(tags::BOX.into(), spec.name.clone());
    t.insert(tags::INTENT.into(), token.into());
    t
}

async fn terminate_extras(
    ctx: &Ctx<'_>,
    name: &str,
    live: &[Instance],
    keep: &Instance,
) -> Result<(), BoxError> {
    let extras: Vec<InstanceId> = live
        .iter()
        .filter(|i| i.id != keep.id)
        .map(|i| i.id.clone())
        .collect();
    if extras.is_empty() {
        return Ok(());
    }
    let list = extras
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    ctx.progress.note(&format!(
        "Box {name} has duplicate instances ({list}); keeping {} and terminating the rest",
        keep.id
    ));
    mark_stopped(
        ctx,
        &extras
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .await?;
    ctx.cloud.terminate(&extras).await?;
    ctx.store
        .record_event(
            ctx.owner,
            Some(name),
            "duplicate-terminated",
            &format!("terminated {list}, kept {}", keep.id),
        )
        .await?;
    Ok(())
}

async fn mark_stopped(ctx: &Ctx<'_>, ids: &[String]) -> Result<(), CloudError> {
    let when = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    ctx.cloud
        .tag(ids, &[(tags::STOPPED.to_owned(), when)])
        .await
}

async fn wait_fulfilled(ctx: &Ctx<'_>, request: &SpotRequestId) -> Result<InstanceId, BoxError> {
    ctx.progress.start(&format!(
        "Waiting for spot request {request} to be fulfilled (usually under a minute)"
    ));
    let deadline = Instant::now() + ctx.timing.running_timeout;
    // What the request says as it moves (open → active, or why AWS does not
    // fulfil it: capacity-not-available, price-too-low, …), each change once.
    let mut said: Option<(SpotRequestState, Option<(String, String)>)> = None;
    loop {
        let all = ctx.cloud.spot_requests(&owner_filter(ctx.owner)).await?;
        let found = all.into_iter().find(|r| &r.id == request);
        if let Some(r) = &found {
            let now = (r.state, r.status.clone());
            if said.as_ref() != Some(&now) {
                ctx.progress.note(&match &r.status {
                    Some((code, message)) if !message.is_empty() => {
                        format!(
                            "Spot request {request}: {} ({code}: {message})",
                            r.state.as_str()
                        )
                    }
                    Some((code, _)) => {
                        format!("Spot request {request}: {} ({code})", r.state.as_str())
                    }
                    None => format!("Spot request {request}: {}", r.state.as_str()),
                });
                said = Some(now);
            }
        }
        match found {
            Some(SpotRequest {
                instance_id: Some(id),
                ..
            }) => {
                ctx.progress.finish(&format!("fulfilled by {id}"));
                return Ok(id);
            }
            Some(r) if r.state != SpotRequestState::Open => {
                ctx.progress.finish(r.state.as_str());
                return Err(BoxError::Timeout {
                    what: format!(
                        "spot request {request} ended {} without an instance",
                        r.state.as_str()
                    ),
                    after: Duration::ZERO,
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            ctx.progress.finish("timed out");
            return Err(BoxError::Timeout {
                what: format!("spot request {request} to be fulfilled"),
                after: ctx.timing.running_timeout,
            });
        }
        sleep(ctx.timing.poll).await;
    }
}

async fn wait_running(ctx: &Ctx<'_>, id: &InstanceId) -> Result<Instance, BoxError> {
    ctx.progress
        .start(&format!("Waiting for instance {id} to be running"));
    let deadline = Instant::now() + ctx.timing.running_timeout;
    loop {
        // Right after a launch DescribeInstances may not know the id yet
        // (eventual consistency): keep asking.
        if let Some(i) = ctx.cloud.instance(id).await? {
            match i.state {
                InstanceState::Running => {
                    ctx.progress.finish("Instance is running.");
                    return Ok(i);
                }
                InstanceState::Pending => {}
                state => {
                    ctx.progress.finish(state.as_str());
                    return Err(BoxError::EndedEarly {
                        id: id.clone(),
                        state,
                    });
                }
            }
        }
        if Instant::now() >= deadline {
            ctx.progress.finish("timed out");
            return Err(BoxError::Timeout {
                what: format!("instance {id} to be running"),
                after: ctx.timing.running_timeout,
            });
        }
        sleep(ctx.timing.poll).await;
    }
}

async fn check_ready(ctx: &Ctx<'_>, spec: &BoxSpec, instance: &Instance) -> Result<(), BoxError> {
    if spec.ready == crate::config::ReadyCheck::None {
        return Ok(());
    }
    ctx.progress.start(&format!(
        "Waiting for server to come up ({})",
        ready::describe(&spec.ready, instance)
    ));
    match ready::wait_ready(&spec.ready, instance, ctx.timing.poll).await {
        Ok(()) => {
            ctx.progress.finish("Server is up!");
            Ok(())
        }
        Err(source) => {
            ctx.progress.finish("not ready");
            Err(BoxError::NotReady {
                id: instance.id.clone(),
                source,
            })
        }
    }
}

/// Stops a box: marks its instances and requests (so no `up` or daemon takes
/// them for the live box), cancels open requests, terminates instances, closes
/// intents, and unless `wait` is false waits until they are shutting down.
pub async fn stop(ctx: &Ctx<'_>, spec: &BoxSpec, wait: bool) -> Result<StopOutcome, BoxError> {
    let box_name = spec.name.as_str();
    let _lock = take_lock(ctx, box_name).await?;
    // Under the lock: an `up` in flight (the daemon's, say) has finished and
    // registered the box; from here no daemon will replace what is stopped.
    ctx.store.deregister_box(ctx.owner, box_name).await?;

    let filter = box_filter(ctx.owner, box_name);
    let instances: Vec<Instance> = ctx
        .cloud
        .instances(&filter)
        .await?
        .into_iter()
        .filter(|i| !i.state.is_gone())
        .collect();
    let requests: Vec<SpotRequest> = ctx
        .cloud
        .spot_requests(&filter)
        .await?
        .into_iter()
        .filter(|r| matches!(r.state, SpotRequestState::Open | SpotRequestState::Active))
        .collect();
    let mut outcome = StopOutcome {
        terminated: instances.iter().map(|i| i.id.clone()).collect(),
        cancelled: requests.iter().map(|r| r.id.clone()).collect(),
    };
    // Instances launched through requests we see only there.
    for r in &requests {
        if let Some(id) = &r.instance_id
            && !outcome.terminated.contains(id)
            && let Some(i) = ctx.cloud.instance(id).await?
            && !i.state.is_gone()
        {
            outcome.terminated.push(id.clone());
        }
    }
    ctx.store
        .close_box_intents(ctx.owner, box_name, "stopped")
        .await?;
    if outcome.terminated.is_empty() && outcome.cancelled.is_empty() {
        ctx.progress.note(&format!(
            "Nothing to stop: box {box_name} has no live instance or open spot request."
        ));
        after_stop(ctx, spec).await?;
        return Ok(outcome);
    }
    // Snapshotting or deleting a volume needs it detached, so its instance gone.
    let volumes_wait = persist::volume_specs(spec)
        .iter()
        .any(|(_, vs)| vs.on_stop != crate::config::OnStop::Retain);

    // Mark first: if we die between here and the terminate, nobody mistakes
    // these for the live box, and the next `stop` finishes the job.
    let mut marked: Vec<String> = outcome
        .terminated
        .iter()
        .map(|i| i.as_str().to_owned())
        .collect();
    marked.extend(outcome.cancelled.iter().map(|r| r.as_str().to_owned()));
    mark_stopped(ctx, &marked).await?;
    if !outcome.cancelled.is_empty() {
        ctx.cloud.cancel_spot_requests(&outcome.cancelled).await?;
        let list = outcome
            .cancelled
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        ctx.progress
            .note(&format!("Cancelled spot request(s) {list}"));
    }
    if !outcome.terminated.is_empty() {
        let list = outcome
            .terminated
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        ctx.progress.start(&format!("Terminating {list}"));
        ctx.cloud.terminate(&outcome.terminated).await?;
        if wait || volumes_wait {
            wait_gone(ctx, &outcome.terminated, volumes_wait).await?;
            ctx.progress.finish(if wait {
                "done."
            } else {
                "done (waited: the volumes' on_stop needs them detached)."
            });
        } else {
            ctx.progress.finish("requested (not waiting).");
        }
    }
    ctx.store
        .record_event(
            ctx.owner,
            Some(box_name),
            "stop",
            &format!(
                "terminated {:?}, cancelled {:?}",
                outcome.terminated, outcome.cancelled
            ),
        )
        .await?;
    after_stop(ctx, spec).await?;
    Ok(outcome)
}

/// Volumes per `on_stop`, and the DNS record unless `keep_dns`.
async fn after_stop(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<(), BoxError> {
    for line in persist::on_stop(ctx.cloud, ctx.owner, spec).await? {
        ctx.progress.note(&line);
    }
    if let Some(dns) = &spec.dns {
        if spec.keep_dns {
            ctx.progress
                .note(&format!("Kept DNS record {} (keep_dns)", dns.name));
        } else {
            for removal in crate::dns::remove(ctx.cloud, ctx.owner, &spec.name, dns).await? {
                match removal {
                    crate::dns::Removal::Deleted(Some(r)) => ctx.progress.note(&format!(
                        "Removed DNS record {} ({})",
                        r.name,
                        r.values.join(", ")
                    )),
                    crate::dns::Removal::Deleted(None) | crate::dns::Removal::Absent => {}
                    crate::dns::Removal::LeftAlone(r, why) => ctx.progress.note(&format!(
                        "Left DNS record {} ({}) alone: {why}",
                        r.name,
                        r.values.join(", ")
                    )),
                }
            }
        }
    }
    Ok(())
}

/// Waits until the instances are shutting down (or, `terminated_only`, terminated).
async fn wait_gone(
    ctx: &Ctx<'_>,
    ids: &[InstanceId],
    terminated_only: bool,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + ctx.timing.stop_timeout;
    let mut left: Vec<InstanceId> = ids.to_vec();
    loop {
        let mut still = Vec::new();
        for id in &left {
            if let Some(i) = ctx.cloud.instance(id).await? {
                let done = if terminated_only {
                    i.state == InstanceState::Terminated
                } else {
                    i.state.is_gone()
                };
                if !done {
                    still.push(id.clone());
                }
            }
        }
        left = still;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BoxError::Timeout {
                what: format!("{left:?} to shut down"),
                after: ctx.timing.stop_timeout,
            });
        }
        sleep(ctx.timing.poll).await;
    }
}
