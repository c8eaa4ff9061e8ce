//! `up`'s steps: trust (or not) what the daemon knows, check what would fail
//! half way, find the box's volumes, take an existing instance or open
//! request, choose the offerings, then per offering: an intent (its client
//! token) recorded before the launch call, the volumes prepared in its zone,
//! the launch, and the race with another launcher settled by the keeper rule.

use std::collections::HashMap;
use std::time::Duration;

use spotkeeper_cloud::{
    ImageId, Instance, InstanceId, InstanceState, LaunchSpec, Market, SpotRequest, SpotRequestId,
    SpotRequestState, Volume,
};
use tokio::time::{Instant, sleep};

use super::choose::Target;
use super::settle::{elastic_ip_reassociation, mark_stopped, settle, terminate_extras};
use super::{Avoid, BoxError, Ctx, Known, UpOutcome, allowed_zones, places};
use crate::config::{BoxSpec, PriceCap, VolumeSpec};
use crate::event_kind::EventKind;
use crate::ownership::{
    LISTING_LAG, box_filter, keeper, launch_tags, live, open_requests, owner_filter,
};
use crate::persist;
use crate::plan;
use crate::store::{Intent, NewIntent, Outcome, StoreError};

/// What every launch attempt of one `up` uses, resolved once.
struct Resolved {
    /// The image (aliases resolved).
    image: ImageId,
    /// The security groups' ids, per subnet (names are looked up in each
    /// subnet's VPC; `None`: the default VPC).
    security_groups: HashMap<Option<String>, Vec<String>>,
}

/// A box's persistent volume as found before the launch.
type Found<'s> = (persist::Role, &'s VolumeSpec, Option<Volume>);

/// What one launch attempt came to.
enum Attempt {
    /// The box is up (launched now, or another launcher's instance).
    Up(Box<UpOutcome>),
    /// No capacity for this offering; why, to say if none has any.
    NoCapacity(String),
}

pub(super) async fn up_inner(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    known: Option<&Known>,
) -> Result<UpOutcome, BoxError> {
    let name = spec.name.as_str();
    // Read once: under the box lock nothing else writes this box's intents.
    let open = ctx.owned().open_intent(name).await?;
    let known = trusted(known, open.as_ref(), avoid);
    if known.is_none() {
        check_before_launch(ctx, spec).await?;
    }
    let found = find_volumes(ctx, spec, known).await?;
    if let Some(outcome) = take_existing(ctx, spec, avoid, known).await? {
        return Ok(outcome);
    }
    // Nothing live is listed. An open intent's instance may only not be
    // listed yet (AWS is eventually consistent): asked for by id it is the
    // box's; gone, it is history now.
    let mut reusable = open;
    if let Some(intent) = &reusable
        && intent.instance_id.is_some()
    {
        if let Some(id) = launched_unlisted(ctx, intent, avoid).await? {
            return settled(ctx, spec, avoid, &id, &[], false).await;
        }
        ctx.store.close_intent(intent.id, Outcome::Gone).await?;
        reusable = None;
    }
    let targets = targets(ctx, spec, avoid, known, &found).await?;
    let resolved = Resolved {
        image: match known {
            Some(k) => k.image.clone(),
            None => launch_image(ctx, spec).await?,
        },
        security_groups: security_groups(ctx, spec, &targets).await?,
    };
    let mut tried = Vec::new();
    for target in targets {
        let intent = intent_for(ctx, spec, reusable.take(), &target).await?;
        match launch_at(ctx, spec, avoid, &found, &resolved, &target, intent).await? {
            Attempt::Up(outcome) => return Ok(*outcome),
            Attempt::NoCapacity(why) => tried.push(why),
        }
    }
    Err(BoxError::NoCapacity {
        tried: tried.join("; "),
    })
}

/// What the daemon knows holds only while nothing was launched since its
/// observation: an open intent whose instance is not one of the doomed
/// means a launch it has not seen, so look at AWS first.
fn trusted<'k>(
    known: Option<&'k Known>,
    open: Option<&Intent>,
    avoid: &Avoid,
) -> Option<&'k Known> {
    match (known, open) {
        (Some(_), Some(i))
            if i.instance_id
                .as_ref()
                .is_some_and(|id| !avoid.instances.contains(&InstanceId::new(id.clone()))) =>
        {
            None
        }
        (k, _) => k,
    }
}

/// The security groups' ids for each subnet a target launches into: once
/// for every offering, and before any volume is made for one (a group name
/// that resolves to nothing stops `up` with nothing done). Names are looked
/// up in the subnet's (or the default) VPC; ids pass.
async fn security_groups(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    targets: &[Target],
) -> Result<HashMap<Option<String>, Vec<String>>, BoxError> {
    let mut by_subnet = HashMap::new();
    for t in targets {
        if !by_subnet.contains_key(&t.subnet) {
            let ids = ctx
                .cloud
                .security_group_ids(&spec.launch.security_groups, t.subnet.as_deref())
                .await?;
            by_subnet.insert(t.subnet.clone(), ids);
        }
    }
    Ok(by_subnet)
}

/// What would otherwise fail half way, checked before anything is launched:
/// the DNS name is the box's to write, the Elastic IP the box's to take.
async fn check_before_launch(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<(), BoxError> {
    if let Some(dns) = &spec.dns {
        crate::dns::check(ctx.cloud, ctx.owner, &spec.name, dns).await?;
    }
    if let Some(alloc) = &spec.elastic_ip {
        elastic_ip_reassociation(ctx, spec, alloc, None).await?;
    }
    Ok(())
}

/// The box's persistent volumes, from what the daemon knows or from AWS.
async fn find_volumes<'s>(
    ctx: &Ctx<'_>,
    spec: &'s BoxSpec,
    known: Option<&Known>,
) -> Result<Vec<Found<'s>>, BoxError> {
    let mut found = Vec::new();
    for (role, vs) in persist::volume_specs(spec) {
        let v = match known.and_then(|k| k.volumes.get(&vs.name)) {
            // Where it is (its zone) is what matters before the launch; it
            // is read again when it is attached.
            Some(v) => Some(v.clone()),
            None => persist::find(ctx.cloud, ctx.owner, &spec.name, role, vs).await?,
        };
        // Its data lives in another region since the box failed over there:
        // launching on this copy would lose what was written there.
        if let Some(region) = v.as_ref().and_then(|v| v.tags.get(persist::AWAY_TAG)) {
            return Err(BoxError::Failover {
                box_name: spec.name.clone(),
                why: format!(
                    "its data lives in {region} since it failed over there (this region's \
                     copy of {} is older): the daemon keeps it there and brings it back; \
                     `spotkeeper stop {}` brings its data home",
                    vs.name, spec.name
                ),
            });
        }
        found.push((role, vs, v));
    }
    Ok(found)
}

/// The box's live instance (duplicates terminated) or its open spot
/// request, waited for and settled; `None` when there is neither.
async fn take_existing(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    known: Option<&Known>,
) -> Result<Option<UpOutcome>, BoxError> {
    if known.is_some() {
        return Ok(None);
    }
    let name = spec.name.as_str();
    let filter = box_filter(ctx.owner, name);
    let mut existing = live(ctx.cloud.instances(&filter).await?);
    existing.retain(|i| !avoid.instances.contains(&i.id));
    let id = if let Some(keep) = keeper(&existing).cloned() {
        ctx.progress.note(&format!(
            "Instance exists already ({}, {}), we will not be provisioning another one",
            keep.id, keep.state
        ));
        terminate_extras(ctx, name, &existing, &keep).await?;
        keep.id
    } else if spec.market == Market::Spot
        && let Some(open) = open_requests(ctx.cloud.spot_requests(&filter).await?)
            .into_iter()
            .next()
    {
        ctx.progress.note(&format!(
            "Spot request {} for box {name} is open already; waiting for it",
            open.id
        ));
        wait_fulfilled(ctx, &open.id).await?
    } else {
        return Ok(None);
    };
    Ok(Some(settled(ctx, spec, avoid, &id, &[], false).await?))
}

/// The live instance of an open intent that a listing left out: asked for
/// by id, as long as AWS may still not know it ([`LISTING_LAG`] after the
/// launch). `None`: it ended, was marked stopped, is being replaced, or AWS
/// has not known it for longer than that.
async fn launched_unlisted(
    ctx: &Ctx<'_>,
    intent: &Intent,
    avoid: &Avoid,
) -> Result<Option<InstanceId>, BoxError> {
    let Some(id) = intent.instance_id.clone().map(InstanceId::new) else {
        return Ok(None);
    };
    if avoid.instances.contains(&id) {
        return Ok(None);
    }
    let age = Duration::from_secs(
        u64::try_from(crate::store::unix_now() - intent.created_at).unwrap_or(0),
    );
    let deadline = Instant::now() + LISTING_LAG.saturating_sub(age);
    loop {
        match ctx.cloud.instance(&id).await? {
            Some(i)
                if i.state.is_live() && i.tag(spotkeeper_cloud::model::tags::STOPPED).is_none() =>
            {
                ctx.progress.note(&format!(
                    "Instance {id} of the last launch is not listed yet (AWS is eventually consistent); taking it"
                ));
                return Ok(Some(id));
            }
            Some(_) => return Ok(None),
            None if Instant::now() < deadline => sleep(ctx.timing.poll).await,
            None => return Ok(None),
        }
    }
}

/// Waits for `id` to run and settles it.
async fn settled(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    id: &InstanceId,
    prepared: &[persist::Prepared],
    launched: bool,
) -> Result<UpOutcome, BoxError> {
    let instance = wait_running(ctx, id).await?;
    let instance = settle(ctx, spec, instance, prepared, &avoid.instances).await?;
    Ok(UpOutcome { instance, launched })
}

/// Where to try, in order: the volumes' zone if they pin one, else the
/// allowed zones; spot offerings under the ceiling cheapest first, or the
/// on-demand types.
async fn targets(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    known: Option<&Known>,
    found: &[Found<'_>],
) -> Result<Vec<Target>, BoxError> {
    let pinned = persist::pinned_zone(
        &found
            .iter()
            .map(|(r, _, v)| (*r, v.clone()))
            .collect::<Vec<_>>(),
        spec.move_volume,
    )?;
    // The subnet of each zone, for a box with subnets (the fast path has
    // none: `known` is only made for boxes without).
    let in_subnets = if spec.subnets.is_empty() {
        Vec::new()
    } else {
        places(ctx, spec).await?
    };
    let subnets: HashMap<String, String> = in_subnets
        .iter()
        .filter_map(|p| p.subnet.clone().map(|s| (p.zone.clone(), s)))
        .collect();
    let zones = match &pinned {
        Some(z) if !spec.subnets.is_empty() && !subnets.contains_key(z) => {
            return Err(BoxError::NoSubnetThere {
                zone: z.clone(),
                subnets: spec.subnets.join(", "),
            });
        }
        Some(z) => {
            ctx.progress
                .note(&format!("The box's volumes are in {z}; launching there"));
            vec![z.clone()]
        }
        None if !in_subnets.is_empty() => in_subnets.iter().map(|p| p.zone.clone()).collect(),
        None => match known {
            Some(k) => k.zones.clone(),
            None => allowed_zones(ctx, spec).await?,
        },
    };
    let mut targets = if spec.market == Market::Spot {
        super::choose::spot_targets(ctx, spec, avoid, known, &zones).await?
    } else {
        let zone = if !spec.subnets.is_empty() || spec.launch.zones.is_some() || !found.is_empty() {
            zones.first().cloned()
        } else {
            None
        };
        spec.instance_types
            .iter()
            .map(|t| Target {
                instance_type: t.clone(),
                zone: zone.clone(),
                subnet: None,
            })
            .collect()
    };
    for t in &mut targets {
        t.subnet = t.zone.as_ref().and_then(|z| subnets.get(z)).cloned();
    }
    Ok(targets)
}

/// The intent of a launch at `target`: a crashed earlier run's, when it
/// planned the same offering (its token makes AWS return what it made),
/// else a new one.
async fn intent_for(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    reusable: Option<Intent>,
    target: &Target,
) -> Result<Intent, BoxError> {
    let (instance_type, zone) = (&target.instance_type, &target.zone);
    match reusable {
        Some(i) if &i.instance_type == instance_type && &i.zone == zone => {
            ctx.progress.note(&format!(
                "Resuming an interrupted launch (client token {})",
                i.token
            ));
            return Ok(i);
        }
        Some(stale) => ctx.store.close_intent(stale.id, Outcome::Abandoned).await?,
        None => {}
    }
    Ok(new_intent(ctx, &spec.name, spec.market, instance_type, zone.as_deref()).await?)
}

/// The volumes made ready in `zone` (found, moved by snapshot, or created).
async fn prepare_volumes(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    found: &[Found<'_>],
    zone: &str,
    image_id: &ImageId,
) -> Result<Vec<persist::Prepared>, BoxError> {
    let mut prepared = Vec::new();
    for (role, vs, existing) in found {
        let want = persist::Wanted {
            role: *role,
            spec: vs,
            existing: existing.as_ref(),
        };
        let p = persist::prepare(ctx.cloud, ctx.owner, &spec.name, want, zone, image_id).await?;
        match (&p.moved_from, p.fresh) {
            (Some(old), _) => ctx.progress.note(&format!(
                "Moved {} {:?} from {} to {zone} by snapshot ({} → {})",
                role.key(),
                vs.name,
                old.zone,
                old.id,
                p.volume.id
            )),
            (None, true) => ctx.progress.note(&format!(
                "Created {} {:?} ({}) in {zone}",
                role.key(),
                vs.name,
                p.volume.id
            )),
            (None, false) => {}
        }
        prepared.push(p);
    }
    Ok(prepared)
}

/// The RunInstances parameters of a launch at `target` under `intent`.
fn launch_spec(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    resolved: &Resolved,
    target: &Target,
    intent: &Intent,
    prepared: &[persist::Prepared],
) -> Result<LaunchSpec, BoxError> {
    let user_data = crate::bootstrap::user_data(
        &spec.name,
        &boot_volumes(spec, prepared),
        spec.launch.user_data.as_deref(),
    )?;
    Ok(LaunchSpec {
        image_id: resolved.image.clone(),
        instance_type: target.instance_type.clone(),
        market: spec.market,
        // A subnet pins the zone (AWS ignores a placement beside it).
        zone: if target.subnet.is_some() {
            None
        } else {
            target.zone.clone()
        },
        subnet_id: target.subnet.clone(),
        security_group_ids: resolved
            .security_groups
            .get(&target.subnet)
            .cloned()
            .unwrap_or_default(),
        key_name: spec.launch.key_name.clone(),
        user_data,
        tags: launch_tags(ctx.owner, spec, &intent.token),
        client_token: intent.token.clone(),
        root_volume: spec.launch.root_disk.clone(),
        iam_instance_profile: spec.launch.iam_instance_profile.clone(),
        spot_max_price: (spec.market == Market::Spot && spec.price_cap == PriceCap::Aws)
            .then_some(spec.max_price),
        metadata_tokens: spec.launch.metadata_tokens,
    })
}

/// One launch at `target`: volumes, the call, its record, the race.
async fn launch_at(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    found: &[Found<'_>],
    resolved: &Resolved,
    target: &Target,
    intent: Intent,
) -> Result<Attempt, BoxError> {
    let name = spec.name.as_str();
    let zone_name = target.zone.as_deref().unwrap_or("any zone");
    let prepared = match &target.zone {
        Some(z) => prepare_volumes(ctx, spec, found, z, &resolved.image).await?,
        None => Vec::new(),
    };
    let launch = launch_spec(ctx, spec, resolved, target, &intent, &prepared)?;
    tracing::debug!(box_name = name, token = %intent.token, "launch call");
    ctx.progress.start(&format!(
        "Requesting a {} {} instance in {zone_name}",
        spec.market, target.instance_type
    ));
    let instance = match ctx.cloud.launch(&launch).await {
        Ok(i) => i,
        Err(e) => {
            let capacity = e.kind.offering_unavailable();
            ctx.progress.finish(&if capacity {
                format!("no capacity ({e})")
            } else {
                "failed".into()
            });
            // AWS refused: nothing exists for this token. Without an answer
            // we cannot know whether AWS launched: the intent stays open so
            // the next run reuses its token.
            if capacity || !e.kind.outcome_unknown() {
                for p in &prepared {
                    persist::discard(ctx.cloud, p).await?;
                }
                let why = if capacity {
                    Outcome::NoCapacity
                } else {
                    Outcome::Failed
                };
                ctx.store.close_intent(intent.id, why).await?;
            }
            ctx.owned()
                .record_event(Some(name), EventKind::LaunchFailed, &e.to_string())
                .await?;
            if !capacity {
                return Err(e.into());
            }
            return Ok(Attempt::NoCapacity(format!(
                "{} in {zone_name}: {}",
                target.instance_type,
                e.code.as_deref().unwrap_or("?")
            )));
        }
    };
    launched(ctx, spec, target, &intent, &instance).await?;
    let outcome = race(ctx, spec, avoid, &intent, instance, &prepared).await?;
    Ok(Attempt::Up(Box::new(outcome)))
}

/// Records a launched instance: on its intent, and as a `launch` event.
async fn launched(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    target: &Target,
    intent: &Intent,
    instance: &Instance,
) -> Result<(), BoxError> {
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
    ctx.owned()
        .record_event(
            Some(&spec.name),
            EventKind::Launch,
            &format!(
                "launched {} ({} {} in {})",
                instance.id,
                spec.market,
                target.instance_type,
                target.zone.as_deref().unwrap_or("?")
            ),
        )
        .await?;
    Ok(())
}

/// Another machine may have launched the same box at the same moment: every
/// racer keeps the oldest and terminates its own if it lost.
async fn race(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    intent: &Intent,
    instance: Instance,
    prepared: &[persist::Prepared],
) -> Result<UpOutcome, BoxError> {
    let mut live_now = live(
        ctx.cloud
            .instances(&box_filter(ctx.owner, &spec.name))
            .await?,
    );
    live_now.retain(|i| !avoid.instances.contains(&i.id));
    if !live_now.iter().any(|i| i.id == instance.id) {
        live_now.push(instance.clone());
    }
    let keep = keeper(&live_now)
        .cloned()
        .unwrap_or_else(|| instance.clone());
    if keep.id == instance.id {
        return settled(ctx, spec, avoid, &instance.id, prepared, true).await;
    }
    ctx.progress.note(&format!(
        "Another launch of box {} won the race ({}); terminating ours ({})",
        spec.name, keep.id, instance.id
    ));
    mark_stopped(ctx, &[instance.id.as_str().to_owned()]).await?;
    ctx.cloud
        .terminate(std::slice::from_ref(&instance.id))
        .await?;
    ctx.store.close_intent(intent.id, Outcome::LostRace).await?;
    for p in prepared {
        persist::discard(ctx.cloud, p).await?;
    }
    settled(ctx, spec, avoid, &keep.id, &[], false).await
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
            spec.name, spec.launch.image
        ));
    }
    let id = ctx.cloud.resolve_image(&spec.launch.image).await?;
    if !matches!(spec.launch.image, spotkeeper_cloud::ImageRef::Id(_)) {
        ctx.progress
            .note(&format!("Image {} is {id}", spec.launch.image));
    }
    Ok(id)
}

/// The volumes the boot script attaches and mounts.
fn boot_volumes(spec: &BoxSpec, prepared: &[persist::Prepared]) -> crate::bootstrap::BootVolumes {
    let mut b = crate::bootstrap::BootVolumes {
        agent: spec.agent.then(|| crate::bootstrap::BootAgent {
            command: spec.on_interruption.as_ref().map(|h| h.command.clone()),
            timeout_secs: spec
                .on_interruption
                .as_ref()
                .map_or(crate::config::DEFAULT_HOOK_TIMEOUT, |h| h.timeout)
                .as_secs(),
        }),
        ..Default::default()
    };
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

/// A new intent (generation, client token) for a launch, recorded before the call.
async fn new_intent(
    ctx: &Ctx<'_>,
    name: &str,
    market: Market,
    instance_type: &str,
    zone: Option<&str>,
) -> Result<Intent, StoreError> {
    let generation = ctx.owned().next_generation(name).await?;
    let token = plan::client_token(ctx.owner, name, generation, market, instance_type, zone);
    ctx.store
        .create_intent(NewIntent {
            owner: ctx.owner,
            box_name: name,
            generation,
            token: &token,
            market,
            instance_type,
            zone,
        })
        .await
}

/// Waits for a spot request to be fulfilled, saying each status change once.
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

/// Waits for `running`; an error if the instance ends first.
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
