//! One pass of one pool: finish launches a crash left open, read the demand,
//! plan, and execute (cancel, terminate, launch in batches), with an intent
//! recorded before every launch. A capacity error marks the offering and
//! plans the rest again at once; a spot quota turns spot off for the pool (on-
//! demand if allowed); an authorization error stops the pass.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spotkeeper_cloud::{
    Cloud, CloudError, ErrorKind, ImageId, Instance, InstanceId, LaunchSpec, Market, SpotRequest,
    SpotRequestState,
};

use spotkeeper_cloud::model::tags;

use super::demand::DemandReader;
use super::plan::{Batch, Input, Member, OfferingKey, OpenRequest, Placement, Plan, Step, plan};
use super::{PoolError, PoolSpec};
use crate::event_kind::EventKind;
use crate::store::{PoolLaunch, Store, unix_seconds};

pub use super::world::{PoolIndex, World, members};

/// An open launch intent older than this is not retried (its instances, if
/// any, are counted by tag like any others).
pub const RESUME_WITHIN: Duration = Duration::from_secs(60 * 60);

/// Capacity errors re-plan at most this many times in one pass.
const MAX_REPLANS: usize = 8;

/// TerminateInstances and CancelSpotInstanceRequests take at most this many ids.
const IDS_PER_CALL: usize = 500;

/// What a pool remembers between passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolMemory {
    /// Desired capacity of the last pass that read the demand.
    pub last_desired: Option<u32>,
    /// Since when the pool has been over its desired capacity.
    pub surplus_since: Option<SystemTime>,
}

/// A launch that failed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LaunchFailure {
    /// What was asked.
    pub batch: Batch,
    /// Short reason (`insufficient-capacity`, `quota-exceeded` …).
    pub reason: &'static str,
    /// AWS's words.
    pub message: String,
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The last plan made (after any re-plans).
    pub plan: Plan,
    /// Instances launched.
    pub launched: Vec<Instance>,
    /// Spot requests cancelled.
    pub cancelled: usize,
    /// Instances terminated.
    pub terminated: usize,
    /// Launches that failed.
    pub failures: Vec<LaunchFailure>,
    /// Offerings to mark unavailable (capacity errors).
    pub marks: Vec<OfferingKey>,
    /// Spot was refused by a quota: keep it off for this pool for a while.
    pub block_spot: bool,
    /// Live instances by market after the pass: (spot, on-demand) units.
    pub units_by_market: (u32, u32),
    /// Mean spot price per capacity unit of the running spot instances.
    pub price_per_unit: Option<f64>,
}

/// The parts a pool pass works with.
#[derive(Clone, Copy)]
pub struct PoolPass<'a> {
    /// The cloud.
    pub cloud: &'a dyn Cloud,
    /// The state store.
    pub store: &'a Store,
    /// Owner tag value.
    pub owner: &'a str,
    /// Where pending-job counts come from.
    pub demand: &'a dyn DemandReader,
}

impl std::fmt::Debug for PoolPass<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolPass")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// An instance this pass launched, as a member owning its strings.
fn member(i: &Instance) -> Member<'static> {
    Member::of(i).into_owned()
}

/// The open spot requests (no instance yet) of `pool`.
pub fn open_requests(spec: &PoolSpec, requests: &[SpotRequest]) -> Vec<OpenRequest> {
    requests
        .iter()
        .filter(|r| {
            r.tag(tags::POOL) == Some(spec.name.as_str())
                && r.state == SpotRequestState::Open
                && r.instance_id.is_none()
        })
        .map(|r| OpenRequest {
            id: r.id.clone(),
            instance_type: r.instance_type.clone(),
        })
        .collect()
}

/// The tags of every pool instance, set at creation.
pub fn pool_tags(owner: &str, spec: &PoolSpec, token: &str) -> BTreeMap<String, String> {
    let mut t = spec.launch.tags.clone();
    t.insert(tags::OWNER.into(), owner.to_owned());
    t.insert(tags::POOL.into(), spec.name.clone());
    t.insert(tags::INTENT.into(), token.to_owned());
    t.insert(tags::NAME.into(), format!("spotkeeper-pool-{}", spec.name));
    t
}

fn launch_spec(owner: &str, spec: &PoolSpec, image: &ImageId, launch: &PoolLaunch) -> LaunchSpec {
    let mut l = LaunchSpec::new(image.clone(), launch.instance_type.clone());
    l.market = launch.market;
    l.zone = Some(launch.zone.clone());
    l.subnet_id = launch.subnet.clone();
    l.security_group_ids = spec.launch.security_groups.clone();
    l.key_name = spec.launch.key_name.clone();
    l.user_data = spec.user_data();
    l.tags = pool_tags(owner, spec, &launch.token);
    l.client_token = launch.token.clone();
    l.root_volume = spec.launch.root_disk.clone();
    l.iam_instance_profile = spec.launch.iam_instance_profile.clone();
    l.metadata_tokens = spec.launch.metadata_tokens;
    l
}

impl PoolPass<'_> {
    async fn places(&self, spec: &PoolSpec, world: &World) -> Result<Vec<Placement>, CloudError> {
        let allowed = |z: &str| {
            spec.launch
                .zones
                .as_ref()
                .is_none_or(|zs| zs.iter().any(|a| a == z))
        };
        if spec.subnets.is_empty() {
            // The pool's zones, else every zone of the region.
            return Ok(spec
                .launch
                .zones
                .as_ref()
                .unwrap_or(&world.zones)
                .iter()
                .map(|z| Placement {
                    zone: z.clone(),
                    subnet: None,
                })
                .collect());
        }
        let mut places = Vec::new();
        for subnet in &spec.subnets {
            let zone = self.cloud.subnet_zone(subnet).await?;
            if allowed(&zone) {
                places.push(Placement {
                    zone,
                    subnet: Some(subnet.clone()),
                });
            }
        }
        Ok(places)
    }

    async fn record(&self, pool: &str, kind: EventKind, message: &str) {
        tracing::info!(pool, kind = kind.as_str(), "{message}");
        if let Err(e) = self
            .store
            .for_owner(self.owner)
            .record_pool_event(pool, kind, message)
            .await
        {
            tracing::warn!("cannot record a pool event in the state file: {e}");
        }
    }

    /// Launches one recorded intent and closes it with the result.
    async fn launch(
        &self,
        spec: &PoolSpec,
        image: &ImageId,
        intent: &PoolLaunch,
    ) -> Result<Vec<Instance>, PoolError> {
        let mut l = launch_spec(self.owner, spec, image, intent);
        // Names are looked up in the launch subnet's (or the default) VPC.
        let resolved = self
            .cloud
            .security_group_ids(&spec.launch.security_groups, intent.subnet.as_deref())
            .await;
        let launched = match resolved {
            Ok(ids) => {
                l.security_group_ids = ids;
                self.cloud
                    .launch_many(&l, u32::try_from(intent.count).unwrap_or(0))
                    .await
            }
            Err(e) => Err(e),
        };
        match launched {
            Ok(instances) => {
                let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
                self.store
                    .close_pool_launch(intent.id, &format!("launched {}", ids.join(" ")))
                    .await?;
                Ok(instances)
            }
            Err(e) => {
                // A lost answer (network, throttling) stays open: the next
                // pass repeats the call with the same token.
                if !e.kind.outcome_unknown() {
                    self.store
                        .close_pool_launch(intent.id, &format!("failed: {e}"))
                        .await?;
                }
                Err(e.into())
            }
        }
    }

    /// Runs one pass of `spec` over `world`.
    pub async fn run(
        &self,
        spec: &PoolSpec,
        world: &World,
        unavailable: &HashSet<OfferingKey>,
        spot_blocked: bool,
        memory: &PoolMemory,
        now: SystemTime,
    ) -> Result<Outcome, PoolError> {
        let mut image: Option<ImageId> = None;
        // 1. Launches a crash left open: repeat them with the same token.
        let launched = self.resume(spec, world, now, &mut image).await?;
        // 2. Observe (from the shared world), read the demand, plan.
        let members = self.observed(spec, world, &launched, now).await?;
        let requests = open_requests(spec, &world.requests);
        let places = self.places(spec, world).await?;
        let prices = self.prices(spec, world, &places).await?;
        let demand = self.demand.pending(&spec.demand).await;
        if let Err(why) = &demand {
            self.record(&spec.name, EventKind::DemandFailed, why).await;
        }
        // 3. Carry out the plan; a launch AWS refuses marks the offering and
        // plans again, a few times at most.
        let mut state = PassState {
            image,
            members,
            launched,
            gone: HashSet::new(),
            cancelled: HashSet::new(),
            unavailable: unavailable.clone(),
            spot_blocked,
            outcome: Outcome::default(),
        };
        let mut reasons_so_far: Vec<String> = Vec::new();
        for round in 0..=MAX_REPLANS {
            let (live, open) = state.standing(&requests);
            let p = plan(&Input {
                spec,
                demand: demand.clone(),
                last_desired: memory.last_desired,
                members: &live,
                open_requests: &open,
                prices: &prices,
                placements: &places,
                unavailable: &state.unavailable,
                risky: if spec.strategy == crate::rank::Strategy::Cheapest {
                    &NO_RISK
                } else {
                    &world.risky
                },
                spot_blocked: state.spot_blocked,
                surplus_since: memory.surplus_since,
                now,
            });
            let mut flow = Flow::Go;
            for step in &p.steps {
                flow = self
                    .step(spec, step, round, now, &places, &mut state)
                    .await?;
                if flow != Flow::Go {
                    break;
                }
            }
            reasons_so_far.extend(p.reasons.iter().cloned());
            state.outcome.plan = p;
            if flow != Flow::Replan || round == MAX_REPLANS {
                break;
            }
        }
        let mut outcome = state.outcome;
        let running: Vec<&Member> = state
            .members
            .iter()
            .filter(|m| !state.gone.contains(&m.id))
            .collect();
        (outcome.units_by_market, outcome.price_per_unit) = units(spec, &running, &prices);
        outcome.plan.reasons = reasons_so_far;
        outcome.launched = state.launched;
        Ok(outcome)
    }

    /// Repeats the pool's launches a crash left open (with their tokens),
    /// closing those too old or whose instances are visible already.
    async fn resume(
        &self,
        spec: &PoolSpec,
        world: &World,
        now: SystemTime,
        image: &mut Option<ImageId>,
    ) -> Result<Vec<Instance>, PoolError> {
        let mut launched = Vec::new();
        for open in self
            .store
            .for_owner(self.owner)
            .open_pool_launches(&spec.name)
            .await?
        {
            let age = unix_seconds(now) - open.created_at;
            if age > RESUME_WITHIN.as_secs() as i64 {
                self.store
                    .close_pool_launch(open.id, "abandoned: too old to repeat")
                    .await?;
                continue;
            }
            // Its instances are already visible (tagged at creation with
            // the token): the launch happened, nothing to repeat.
            let seen = world
                .instances
                .iter()
                .filter(|i| i.tag(tags::INTENT) == Some(open.token.as_str()))
                .count();
            if seen > 0 {
                self.store
                    .close_pool_launch(open.id, &format!("found {seen} instances by tag"))
                    .await?;
                continue;
            }
            let img = self.image(spec, image).await?;
            match self.launch(spec, &img, &open).await {
                Ok(instances) => {
                    let known: HashSet<&InstanceId> =
                        world.instances.iter().map(|i| &i.id).collect();
                    launched.extend(instances.into_iter().filter(|i| !known.contains(&i.id)));
                }
                Err(e) => {
                    self.record(
                        &spec.name,
                        EventKind::ResumeFailed,
                        &format!("repeating launch {}: {e}", open.token),
                    )
                    .await;
                }
            }
        }
        Ok(launched)
    }

    /// The pool's members: the world's, what this pass launched again, and
    /// what it launched lately that the world does not list yet.
    async fn observed<'w>(
        &self,
        spec: &PoolSpec,
        world: &'w World,
        launched: &[Instance],
        now: SystemTime,
    ) -> Result<Vec<Member<'w>>, PoolError> {
        let mut all = world.members(spec);
        for i in launched {
            all.push(member(i));
        }
        let unlisted = self.unlisted(spec, world, now).await?;
        all.extend(
            unlisted
                .into_iter()
                .filter(|m| !launched.iter().any(|l| l.id == *m.id)),
        );
        Ok(all)
    }

    /// Instances the pool launched lately that the world does not list at
    /// all (AWS lists a new instance only after a while): they count as
    /// pending members, so a pass right after a launch does not launch them
    /// again.
    async fn unlisted(
        &self,
        spec: &PoolSpec,
        world: &World,
        now: SystemTime,
    ) -> Result<Vec<Member<'static>>, PoolError> {
        let since = unix_seconds(now) - crate::ownership::LISTING_LAG.as_secs() as i64;
        let recent = self
            .store
            .for_owner(self.owner)
            .launched_since(&spec.name, since)
            .await?;
        if recent.is_empty() {
            return Ok(Vec::new());
        }
        let listed: HashSet<&str> = world.instances.iter().map(|i| i.id.as_str()).collect();
        let mut out = Vec::new();
        for (launch, ids) in recent {
            for id in ids.iter().filter(|id| !listed.contains(id.as_str())) {
                out.push(Member {
                    id: std::borrow::Cow::Owned(InstanceId::new(id.clone())),
                    instance_type: launch.instance_type.clone().into(),
                    zone: Some(launch.zone.clone().into()),
                    market: launch.market,
                    launched_at: Some(
                        UNIX_EPOCH + Duration::from_secs(launch.created_at.max(0) as u64),
                    ),
                });
            }
        }
        Ok(out)
    }

    /// The pool's image, resolved once per pass.
    async fn image(
        &self,
        spec: &PoolSpec,
        image: &mut Option<ImageId>,
    ) -> Result<ImageId, PoolError> {
        if let Some(img) = image {
            return Ok(img.clone());
        }
        let img = self.cloud.resolve_image(&spec.launch.image).await?;
        *image = Some(img.clone());
        Ok(img)
    }

    /// Spot prices of the pool's types in its places: from the shared
    /// observation, or read for a pool in its own subnets.
    async fn prices(
        &self,
        spec: &PoolSpec,
        world: &World,
        places: &[Placement],
    ) -> Result<Vec<spotkeeper_cloud::SpotPrice>, PoolError> {
        let zones: Vec<String> = places.iter().map(|p| p.zone.clone()).collect();
        let type_names: Vec<String> = spec.types.iter().map(|t| t.instance_type.clone()).collect();
        Ok(match &world.prices {
            _ if zones.is_empty() => Vec::new(),
            Some(all) if spec.subnets.is_empty() => all
                .iter()
                .filter(|p| type_names.contains(&p.instance_type) && zones.contains(&p.zone))
                .cloned()
                .collect(),
            _ => self.cloud.spot_prices(&type_names, &zones).await?,
        })
    }

    /// Carries out one step of a plan.
    async fn step(
        &self,
        spec: &PoolSpec,
        step: &Step,
        round: usize,
        now: SystemTime,
        places: &[Placement],
        state: &mut PassState<'_>,
    ) -> Result<Flow, PoolError> {
        match step {
            Step::Cancel { requests } => {
                for chunk in requests.chunks(IDS_PER_CALL) {
                    self.cloud.cancel_spot_requests(chunk).await?;
                }
                state.cancelled.extend(requests.iter().cloned());
                state.outcome.cancelled += requests.len();
                self.record(
                    &spec.name,
                    EventKind::Cancel,
                    &format!("cancelled {} open spot requests", requests.len()),
                )
                .await;
                Ok(Flow::Go)
            }
            Step::Terminate { instances } => {
                for chunk in instances.chunks(IDS_PER_CALL) {
                    self.cloud.terminate(chunk).await?;
                }
                state.gone.extend(instances.iter().cloned());
                state.outcome.terminated += instances.len();
                let ids: Vec<&str> = instances.iter().map(InstanceId::as_str).collect();
                self.record(
                    &spec.name,
                    EventKind::ScaleDown,
                    &format!("terminated {}", ids.join(" ")),
                )
                .await;
                Ok(Flow::Go)
            }
            Step::Launch(batch) => {
                self.launch_batch(spec, batch, round, now, places, state)
                    .await
            }
        }
    }

    /// Launches a batch under a new intent; a refusal marks the offering.
    async fn launch_batch(
        &self,
        spec: &PoolSpec,
        batch: &Batch,
        round: usize,
        now: SystemTime,
        places: &[Placement],
        state: &mut PassState<'_>,
    ) -> Result<Flow, PoolError> {
        let img = self.image(spec, &mut state.image).await?;
        let intent = self.new_launch(spec, batch, round, now).await?;
        match self.launch(spec, &img, &intent).await {
            Ok(instances) => {
                let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
                self.record(
                    &spec.name,
                    EventKind::Launch,
                    &format!(
                        "launched {} × {} in {} ({}): {}",
                        batch.count,
                        batch.instance_type,
                        batch.zone,
                        batch.market.as_str(),
                        ids.join(" ")
                    ),
                )
                .await;
                for i in &instances {
                    state.members.push(member(i));
                }
                state.launched.extend(instances);
                Ok(Flow::Go)
            }
            Err(PoolError::Cloud(e)) => Ok(self.refused(spec, batch, &e, places, state).await),
            Err(other) => Err(other),
        }
    }

    /// Records the intent of a batch launch (its client token) before the call.
    async fn new_launch(
        &self,
        spec: &PoolSpec,
        batch: &Batch,
        round: usize,
        now: SystemTime,
    ) -> Result<PoolLaunch, PoolError> {
        let token = crate::plan::client_token(
            self.owner,
            &format!("pool:{}", spec.name),
            now.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64)
                .wrapping_add(round as i64),
            batch.market,
            &batch.instance_type,
            Some(&format!("{}:{}", batch.zone, batch.count)),
        );
        let launch = PoolLaunch {
            id: 0,
            pool: spec.name.clone(),
            token,
            instance_type: batch.instance_type.clone(),
            zone: batch.zone.clone(),
            subnet: batch.subnet.clone(),
            market: batch.market,
            count: i64::from(batch.count),
            created_at: unix_seconds(now),
        };
        Ok(self
            .store
            .for_owner(self.owner)
            .create_pool_launch(&launch)
            .await?)
    }

    /// What a launch AWS refused changes: no capacity marks the offering, a
    /// spot quota blocks spot, an on-demand quota marks the type on-demand
    /// everywhere (each: plan again); no permission stops the pass.
    async fn refused(
        &self,
        spec: &PoolSpec,
        batch: &Batch,
        e: &CloudError,
        places: &[Placement],
        state: &mut PassState<'_>,
    ) -> Flow {
        state.outcome.failures.push(LaunchFailure {
            batch: batch.clone(),
            reason: e.kind.as_str(),
            message: e.to_string(),
        });
        let mut mark = |zone: &str, market: Market| {
            let key = OfferingKey::new(&batch.instance_type, zone, market);
            state.unavailable.insert(key.clone());
            state.outcome.marks.push(key);
        };
        let (kind, message, flow) = match e.kind {
            k if k.offering_unavailable() => {
                mark(&batch.zone, batch.market);
                let what = format!(
                    "{} in {} ({}): {e}; trying the next offering",
                    batch.instance_type,
                    batch.zone,
                    batch.market.as_str()
                );
                (EventKind::NoCapacity, what, Flow::Replan)
            }
            ErrorKind::QuotaExceeded if batch.market == Market::Spot => {
                state.spot_blocked = true;
                state.outcome.block_spot = true;
                let then = if spec.launch.fallback_on_demand {
                    "launching on-demand until it clears"
                } else {
                    "no fallback: the pool stays short"
                };
                (
                    EventKind::Quota,
                    format!("spot quota reached ({e}); {then}"),
                    Flow::Replan,
                )
            }
            ErrorKind::QuotaExceeded => {
                // Every zone of this type on-demand.
                for p in places {
                    mark(&p.zone, Market::OnDemand);
                }
                (
                    EventKind::Quota,
                    format!("on-demand quota reached: {e}"),
                    Flow::Replan,
                )
            }
            ErrorKind::Unauthorized => (
                EventKind::Unauthorized,
                format!("not allowed to launch, stopping this pass: {e}"),
                Flow::Halt,
            ),
            _ => (EventKind::LaunchFailed, e.to_string(), Flow::Go),
        };
        self.record(&spec.name, kind, &message).await;
        flow
    }
}

/// No offering is risky (`strategy = "cheapest"`).
static NO_RISK: std::sync::LazyLock<HashSet<OfferingKey>> = std::sync::LazyLock::new(HashSet::new);

/// What a pass carries from step to step.
struct PassState<'w> {
    image: Option<ImageId>,
    members: Vec<Member<'w>>,
    launched: Vec<Instance>,
    gone: HashSet<InstanceId>,
    cancelled: HashSet<spotkeeper_cloud::SpotRequestId>,
    unavailable: HashSet<OfferingKey>,
    spot_blocked: bool,
    outcome: Outcome,
}

impl<'w> PassState<'w> {
    /// The members not terminated and the requests not cancelled so far.
    fn standing(&self, requests: &[OpenRequest]) -> (Vec<Member<'w>>, Vec<OpenRequest>) {
        let live = self
            .members
            .iter()
            .filter(|m| !self.gone.contains(&m.id))
            .cloned()
            .collect();
        let open = requests
            .iter()
            .filter(|r| !self.cancelled.contains(&r.id))
            .cloned()
            .collect();
        (live, open)
    }
}

/// Where a pass goes after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// On with the plan.
    Go,
    /// Something changed what is possible: plan again.
    Replan,
    /// Stop the pass.
    Halt,
}

/// Units by market of what runs after the pass, and the spot price per unit.
fn units(
    spec: &PoolSpec,
    running: &[&Member],
    prices: &[spotkeeper_cloud::SpotPrice],
) -> ((u32, u32), Option<f64>) {
    let mut spot_units = 0;
    let mut od_units = 0;
    let mut spot_cost = 0.0;
    let mut priced_units = 0;
    for m in running {
        let cap = spec.capacity_of(&m.instance_type);
        match m.market {
            Market::Spot => {
                spot_units += cap;
                if let Some(p) = prices.iter().find(|p| {
                    p.instance_type == m.instance_type && m.zone.as_deref() == Some(p.zone.as_str())
                }) {
                    spot_cost += p.price;
                    priced_units += cap;
                }
            }
            Market::OnDemand => od_units += cap,
        }
    }
    (
        (spot_units, od_units),
        (priced_units > 0).then(|| spot_cost / f64::from(priced_units)),
    )
}
