//! The pool planner: pure, `(spec, demand, observed, unavailable, prices, now)
//! -> Plan`. It reads nothing and calls nothing, so it is tested exhaustively
//! and benchmarked at 10,000 instances.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use spotkeeper_cloud::{Instance, InstanceId, Market, SpotPrice, SpotRequestId};

use super::PoolSpec;

/// Offerings whose price per unit is within this factor of the cheapest one
/// share a launch: a pool spread over several types and zones loses less to
/// one interruption wave.
pub const DIVERSIFY_WITHIN: f64 = 1.2;

/// A live (pending or running) instance of the pool. It borrows from the
/// observed instance where it can: a pass over 10,000 instances copies no
/// id, type or zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Member<'a> {
    /// Instance id.
    pub id: Cow<'a, InstanceId>,
    /// Its type.
    pub instance_type: Cow<'a, str>,
    /// Its zone.
    pub zone: Option<Cow<'a, str>>,
    /// Spot or on-demand.
    pub market: Market,
    /// When it was launched.
    pub launched_at: Option<SystemTime>,
}

impl<'a> Member<'a> {
    /// The member `instance` is, borrowing its strings.
    pub fn of(instance: &'a Instance) -> Self {
        Self {
            id: Cow::Borrowed(&instance.id),
            instance_type: Cow::Borrowed(&instance.instance_type),
            zone: instance.zone.as_deref().map(Cow::Borrowed),
            market: instance.market,
            launched_at: instance.launched_at,
        }
    }

    /// The same member, owning its strings.
    pub fn into_owned(self) -> Member<'static> {
        Member {
            id: Cow::Owned(self.id.into_owned()),
            instance_type: Cow::Owned(self.instance_type.into_owned()),
            zone: self.zone.map(|z| Cow::Owned(z.into_owned())),
            market: self.market,
            launched_at: self.launched_at,
        }
    }
}

/// An open spot request of the pool (no instance yet).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRequest {
    /// Request id.
    pub id: SpotRequestId,
    /// Requested type.
    pub instance_type: Option<String>,
}

/// Where the pool may launch: a zone, with the subnet to use there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Availability zone.
    pub zone: String,
    /// Subnet in that zone, if the pool names subnets.
    pub subnet: Option<String>,
}

/// An offering a pool may not use for now: (type, zone, market).
/// An offering the planner may be told to avoid.
pub type OfferingKey = spotkeeper_cloud::Offering;

/// Everything the planner looks at.
#[derive(Debug)]
pub struct Input<'a> {
    /// The pool.
    pub spec: &'a PoolSpec,
    /// Pending jobs, or why the count is unknown.
    pub demand: Result<u64, String>,
    /// The desired capacity of the last pass that read the demand.
    pub last_desired: Option<u32>,
    /// Live instances, not counting those warned of interruption.
    pub members: &'a [Member<'a>],
    /// Open spot requests.
    pub open_requests: &'a [OpenRequest],
    /// Current spot prices (types × zones of the pool).
    pub prices: &'a [SpotPrice],
    /// Where the pool may launch.
    pub placements: &'a [Placement],
    /// Offerings marked unavailable (capacity errors, interruptions).
    pub unavailable: &'a HashSet<OfferingKey>,
    /// Offerings launched in last (risky by this owner's record; empty for
    /// `strategy = "cheapest"`).
    pub risky: &'a HashSet<OfferingKey>,
    /// Spot is refused for the whole pool (a spot quota was hit).
    pub spot_blocked: bool,
    /// Since when the pool has been over its desired capacity.
    pub surplus_since: Option<SystemTime>,
    /// Now.
    pub now: SystemTime,
}

/// Launch `count` instances of one offering in one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Batch {
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Subnet in that zone, if any.
    pub subnet: Option<String>,
    /// Spot or on-demand.
    pub market: Market,
    /// Instances.
    pub count: u32,
    /// Capacity units each.
    pub capacity: u32,
    /// Spot price per instance-hour, when known.
    pub price: Option<f64>,
}

/// One action of a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Cancel open spot requests (first, when over).
    Cancel {
        /// The requests.
        requests: Vec<SpotRequestId>,
    },
    /// Terminate instances (idle surplus, newest first).
    Terminate {
        /// The instances.
        instances: Vec<InstanceId>,
    },
    /// Launch a batch.
    Launch(Batch),
}

/// What a pass decided, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Desired capacity units.
    pub desired: u32,
    /// Current capacity units: live instances plus open requests.
    pub current: u32,
    /// Units in open spot requests.
    pub pending: u32,
    /// Set when the demand could not be read: the pool holds (never shrinks).
    pub held: Option<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Why, in words.
    pub reasons: Vec<String>,
    /// Carried to the next pass.
    pub surplus_since: Option<SystemTime>,
}

/// Capacity units of open spot requests (1 for an unknown type).
pub fn request_units(spec: &PoolSpec, requests: &[OpenRequest]) -> u32 {
    requests
        .iter()
        .map(|r| {
            r.instance_type
                .as_deref()
                .map_or(1, |t| spec.capacity_of(t))
        })
        .sum()
}

/// Members on their way out, with why: spot instances whose offering's price
/// rose over their ceiling while an allowed offering is under it, and (with
/// `max_lifetime`) the oldest of those past it, a quarter of the pool at most.
/// They no longer count: replacements launch, and once the pool is whole
/// without them they are terminated.
fn retiring(input: &Input<'_>) -> Vec<(InstanceId, String)> {
    let spec = input.spec;
    let ceiling = |t: &str| {
        spec.types
            .iter()
            .find(|x| x.instance_type == t)
            .and_then(|x| x.max_price)
            .or(spec.max_price)
    };
    let under_somewhere = input.prices.iter().any(|p| {
        ceiling(&p.instance_type).is_some_and(|c| p.price <= c)
            && input.placements.iter().any(|pl| pl.zone == p.zone)
    });
    let mut out: Vec<(InstanceId, String)> = Vec::new();
    for m in input.members.iter().filter(|m| m.market == Market::Spot) {
        let price = input.prices.iter().find(|p| {
            p.instance_type == m.instance_type && m.zone.as_deref() == Some(p.zone.as_str())
        });
        if let (Some(p), Some(c)) = (price, ceiling(&m.instance_type))
            && p.price > c
            && under_somewhere
        {
            out.push((
                InstanceId::clone(&m.id),
                format!("{} over the ceiling ({} > {c})", m.id, p.price),
            ));
        }
    }
    if let Some(max) = spec.max_lifetime {
        let at_most = (input.members.len() / 4).max(1);
        let mut old: Vec<&Member> = input
            .members
            .iter()
            .filter(|m| !out.iter().any(|(id, _)| *id == *m.id))
            .filter(|m| {
                m.launched_at
                    .and_then(|t| input.now.duration_since(t).ok())
                    .is_some_and(|age| age >= max)
            })
            .collect();
        old.sort_by(|a, b| {
            a.launched_at
                .cmp(&b.launched_at)
                .then(a.id.as_str().cmp(b.id.as_str()))
        });
        for m in old.into_iter().take(at_most) {
            out.push((
                InstanceId::clone(&m.id),
                format!("{} past max_lifetime ({}s)", m.id, max.as_secs()),
            ));
        }
    }
    out
}

/// Plans one pass of one pool.
pub fn plan(input: &Input<'_>) -> Plan {
    let spec = input.spec;
    let mut reasons = Vec::new();
    let retiring = retiring(input);
    let staying: Vec<&Member> = input
        .members
        .iter()
        .filter(|m| !retiring.iter().any(|(id, _)| *id == *m.id))
        .collect();
    let in_members: u32 = staying
        .iter()
        .map(|m| spec.capacity_of(&m.instance_type))
        .sum();
    let pending = request_units(spec, input.open_requests);
    let current = in_members + pending;
    let (desired, held) = desired(input, current, &mut reasons);
    over_ceiling(input, &mut reasons);
    let mut steps = Vec::new();
    let mut surplus_since = None;
    if !retiring.is_empty() {
        let why: Vec<&str> = retiring.iter().map(|(_, w)| w.as_str()).collect();
        if current >= desired {
            reasons.push(format!("replaced, now terminated: {}", why.join(", ")));
            steps.push(Step::Terminate {
                instances: retiring.iter().map(|(id, _)| id.clone()).collect(),
            });
        } else {
            reasons.push(format!("to be replaced first: {}", why.join(", ")));
        }
    }
    if current < desired {
        let need = desired - current;
        reasons.push(format!("short {need} units (current {current})"));
        launch(input, need, current, &mut steps, &mut reasons);
    } else if current > desired && held.is_none() {
        reasons.push(format!(
            "over by {} units (current {current})",
            current - desired
        ));
        surplus_since = scale_down(input, &staying, current - desired, &mut steps, &mut reasons);
    }
    Plan {
        desired,
        current,
        pending,
        held,
        steps,
        reasons,
        surplus_since,
    }
}

/// The desired capacity from the demand, and why it is held when the demand
/// cannot be read (then never lower than now).
fn desired(input: &Input<'_>, current: u32, reasons: &mut Vec<String>) -> (u32, Option<String>) {
    let spec = input.spec;
    match &input.demand {
        Ok(jobs) => {
            let units = jobs.div_ceil(u64::from(spec.jobs_per_capacity.max(1)));
            let desired =
                units.clamp(u64::from(spec.min_capacity), u64::from(spec.max_capacity)) as u32;
            reasons.push(format!(
                "{jobs} pending jobs → {units} units, within {}..={} → desired {desired}",
                spec.min_capacity, spec.max_capacity
            ));
            (desired, None)
        }
        Err(why) => {
            let desired = input
                .last_desired
                .unwrap_or(current)
                .clamp(spec.min_capacity, spec.max_capacity);
            reasons.push(format!(
                "demand unknown ({why}): holding at {desired}, never scaling down"
            ));
            (desired, Some(why.clone()))
        }
    }
}

/// Said on every pass, so `pool show` tells why a type is not used.
fn over_ceiling(input: &Input<'_>, reasons: &mut Vec<String>) {
    let spec = input.spec;
    let mut excluded = Vec::new();
    for t in &spec.types {
        let Some(ceiling) = t.max_price.or(spec.max_price) else {
            continue;
        };
        for p in input.prices.iter().filter(|p| {
            p.instance_type == t.instance_type
                && p.price > ceiling
                && input.placements.iter().any(|pl| pl.zone == p.zone)
        }) {
            excluded.push(format!(
                "{} in {} ({} > {ceiling})",
                t.instance_type, p.zone, p.price
            ));
        }
    }
    if !excluded.is_empty() {
        excluded.sort();
        reasons.push(format!("over the price ceiling: {}", excluded.join(", ")));
    }
}

/// Over by `surplus` units: open requests are cancelled at once (nothing
/// runs on them); instances go once the pool has been over for
/// `scale_down_after`, on-demand first, newest first. Returns since when the
/// pool is over, while it waits.
fn scale_down(
    input: &Input<'_>,
    staying: &[&Member],
    mut surplus: u32,
    steps: &mut Vec<Step>,
    reasons: &mut Vec<String>,
) -> Option<SystemTime> {
    let spec = input.spec;
    let mut cancel = Vec::new();
    for r in input.open_requests {
        let cap = r
            .instance_type
            .as_deref()
            .map_or(1, |t| spec.capacity_of(t));
        if cap <= surplus {
            surplus -= cap;
            cancel.push(r.id.clone());
        }
    }
    if !cancel.is_empty() {
        reasons.push(format!("cancel {} open spot requests", cancel.len()));
        steps.push(Step::Cancel { requests: cancel });
    }
    if surplus == 0 {
        return None;
    }
    let since = input.surplus_since.unwrap_or(input.now);
    let idle = input.now.duration_since(since).unwrap_or(Duration::ZERO);
    if idle < spec.scale_down_after {
        reasons.push(format!(
            "surplus of {surplus} units idle for {}s; terminating after {}s",
            idle.as_secs(),
            spec.scale_down_after.as_secs()
        ));
        return Some(since);
    }
    let mut order: Vec<&Member> = staying.to_vec();
    order.sort_by(|a, b| {
        (a.market == Market::Spot)
            .cmp(&(b.market == Market::Spot))
            .then(b.launched_at.cmp(&a.launched_at))
            .then(b.id.as_str().cmp(a.id.as_str()))
    });
    let mut doomed = Vec::new();
    for m in order {
        let cap = spec.capacity_of(&m.instance_type);
        if cap <= surplus {
            surplus -= cap;
            doomed.push(InstanceId::clone(&m.id));
        }
        if surplus == 0 {
            break;
        }
    }
    if !doomed.is_empty() {
        reasons.push(format!(
            "idle for {}s (scale_down_after {}s): terminate {} instances",
            idle.as_secs(),
            spec.scale_down_after.as_secs(),
            doomed.len()
        ));
        steps.push(Step::Terminate { instances: doomed });
    }
    None
}

/// A candidate offering with its price per unit.
#[derive(Debug)]
struct Candidate<'a> {
    instance_type: &'a str,
    placement: &'a Placement,
    market: Market,
    capacity: u32,
    price: Option<f64>,
    per_unit: f64,
    rank: usize,
    /// In [`Input::risky`]: launched in only when nothing else fits.
    risky: bool,
}

/// Plans launches for `need` units: spot offerings under their ceiling,
/// cheapest per unit first, else on-demand when the pool falls back; spread
/// over the offerings near the cheapest.
fn launch(
    input: &Input<'_>,
    need: u32,
    current: u32,
    steps: &mut Vec<Step>,
    reasons: &mut Vec<String>,
) {
    let spec = input.spec;
    let spot = if input.spot_blocked {
        reasons.push("spot refused for now (quota): spot offerings skipped".into());
        Vec::new()
    } else {
        spot_candidates(input)
    };
    let candidates = if !spot.is_empty() {
        spot
    } else if spec.launch.fallback_on_demand {
        let od = on_demand_candidates(input);
        if !od.is_empty() {
            reasons.push("no spot offering: falling back to on-demand".into());
        }
        od
    } else {
        Vec::new()
    };
    if candidates.is_empty() {
        reasons.push(format!(
            "short {need} units but no offering is available (fallback {})",
            if spec.launch.fallback_on_demand {
                "on-demand also unavailable"
            } else {
                "none"
            }
        ));
        return;
    }
    let counts = spread(input, &candidates, need, current, reasons);
    for (c, count) in candidates.iter().zip(counts) {
        if count == 0 {
            continue;
        }
        reasons.push(format!(
            "launch {count} × {} in {} ({}{})",
            c.instance_type,
            c.placement.zone,
            c.market.as_str(),
            c.price
                .map(|p| format!(", {:.4}/unit-hour", p / f64::from(c.capacity)))
                .unwrap_or_default()
        ));
        steps.push(Step::Launch(Batch {
            instance_type: c.instance_type.to_owned(),
            zone: c.placement.zone.clone(),
            subnet: c.placement.subnet.clone(),
            market: c.market,
            count,
            capacity: c.capacity,
            price: c.price,
        }));
    }
}

/// Spot offerings available and under their ceiling, cheapest per unit first.
fn spot_candidates<'a>(input: &Input<'a>) -> Vec<Candidate<'a>> {
    let spec = input.spec;
    let prices: HashMap<(&str, &str), f64> = input
        .prices
        .iter()
        .map(|p| ((p.instance_type.as_str(), p.zone.as_str()), p.price))
        .collect();
    let mut spot = Vec::new();
    // A key owns its type and zone: made only when a set is there to ask.
    let marked = !input.unavailable.is_empty() || !input.risky.is_empty();
    for (rank, t) in spec.types.iter().enumerate() {
        let ceiling = t.max_price.or(spec.max_price);
        for placement in input.placements {
            let key = marked.then(|| OfferingKey::spot(&t.instance_type, &placement.zone));
            if key.as_ref().is_some_and(|k| input.unavailable.contains(k)) {
                continue;
            }
            let Some(&price) = prices.get(&(t.instance_type.as_str(), placement.zone.as_str()))
            else {
                continue;
            };
            if ceiling.is_some_and(|c| price > c) {
                continue;
            }
            spot.push(Candidate {
                instance_type: &t.instance_type,
                placement,
                market: Market::Spot,
                capacity: t.capacity,
                price: Some(price),
                per_unit: price / f64::from(t.capacity),
                rank,
                risky: key.as_ref().is_some_and(|k| input.risky.contains(k)),
            });
        }
    }
    spot.sort_by(|a, b| {
        a.risky
            .cmp(&b.risky)
            .then(a.per_unit.total_cmp(&b.per_unit))
            .then(a.rank.cmp(&b.rank))
            .then(a.placement.zone.cmp(&b.placement.zone))
    });
    spot
}

/// No spot to be had: on-demand, the most preferred available type, spread over zones.
fn on_demand_candidates<'a>(input: &Input<'a>) -> Vec<Candidate<'a>> {
    let mut od = Vec::new();
    for (rank, t) in input.spec.types.iter().enumerate() {
        for placement in input.placements {
            let key = OfferingKey::new(&t.instance_type, &placement.zone, Market::OnDemand);
            if input.unavailable.contains(&key) {
                continue;
            }
            od.push(Candidate {
                instance_type: &t.instance_type,
                placement,
                market: Market::OnDemand,
                capacity: t.capacity,
                price: None,
                per_unit: 0.0,
                rank,
                risky: false,
            });
        }
    }
    if let Some(best) = od.iter().map(|c| c.rank).min() {
        od.retain(|c| c.rank == best);
    }
    od
}

/// How many instances of each candidate make up `need` units: where there
/// are fewest units already, among the offerings near the cheapest.
fn spread(
    input: &Input<'_>,
    candidates: &[Candidate<'_>],
    need: u32,
    current: u32,
    reasons: &mut Vec<String>,
) -> Vec<u32> {
    let spec = input.spec;
    // Units already in each offering: spread new ones where there are fewest.
    let mut held: HashMap<(&str, &str), u32> = HashMap::new();
    for m in input.members {
        if let Some(zone) = m.zone.as_deref() {
            *held.entry((&*m.instance_type, zone)).or_default() +=
                spec.capacity_of(&m.instance_type);
        }
    }
    // Candidates are sorted cheapest per unit first (on-demand: by preference).
    let cheapest = candidates[0].per_unit;
    let near = candidates
        .iter()
        .take_while(|c| c.per_unit <= cheapest * DIVERSIFY_WITHIN && !c.risky)
        .count()
        .max(1);
    let mut counts = vec![0u32; candidates.len()];
    let mut remaining = need;
    let mut total = current;
    while remaining > 0 {
        let units = |i: usize| {
            let c = &candidates[i];
            held.get(&(c.instance_type, c.placement.zone.as_str()))
                .copied()
                .unwrap_or(0)
                + counts[i] * c.capacity
        };
        // Prefer offerings that fit the remaining need exactly or under;
        // when every one overshoots, the smallest, if max_capacity allows.
        // Spread over the offerings near the cheapest (fewest units first);
        // when none of those fits, the cheapest other offering that does.
        let pick = (0..near)
            .filter(|&i| candidates[i].capacity <= remaining)
            .min_by(|&a, &b| {
                units(a)
                    .cmp(&units(b))
                    .then(candidates[a].per_unit.total_cmp(&candidates[b].per_unit))
                    .then(a.cmp(&b))
            })
            .or_else(|| (near..candidates.len()).find(|&i| candidates[i].capacity <= remaining))
            .or_else(|| {
                (0..candidates.len())
                    .filter(|&i| total + candidates[i].capacity <= spec.max_capacity)
                    .min_by(|&a, &b| {
                        candidates[a]
                            .capacity
                            .cmp(&candidates[b].capacity)
                            .then(candidates[a].per_unit.total_cmp(&candidates[b].per_unit))
                    })
            });
        let Some(i) = pick else {
            reasons.push(format!(
                "{remaining} units left unlaunched: every offering would exceed max_capacity {}",
                spec.max_capacity
            ));
            break;
        };
        counts[i] += 1;
        let cap = candidates[i].capacity;
        total += cap;
        remaining = remaining.saturating_sub(cap);
    }
    counts
}
