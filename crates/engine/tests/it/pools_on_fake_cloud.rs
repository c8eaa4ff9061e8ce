//! Worker pools on FakeCloud: the planner's arithmetic (weights, clamps,
//! max_capacity with requests in flight, price ceilings, diversification),
//! scale-down order and idle time, and the pass's handling of launch
//! failures (capacity → next offering, spot quota → on-demand and back,
//! authorization → stop), holding on a failed demand source.

use crate::common;
use spotkeeper_cloud::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    InstanceId, InstanceState, Market, SpotPrice, SpotRequest, SpotRequestId, SpotRequestState,
};
use spotkeeper_engine::config;
use spotkeeper_engine::pools::demand::DemandReader;
use spotkeeper_engine::pools::pass::{PoolMemory, PoolPass, World};
use spotkeeper_engine::pools::plan::{Input, Member, OpenRequest, Placement, Step, plan};
use spotkeeper_engine::pools::{Demand, PoolSpec};
use spotkeeper_engine::store::Store;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn pool(extra: &str) -> PoolSpec {
    let text = format!(
        "owner = \"tester\"\n[pool.builders]\nimage = \"ami-0123456789abcdef0\"\n\
         instance_types = [ {{ type = \"c7i.large\", capacity = 1 }}, {{ type = \"c7i.xlarge\", capacity = 2, max_price = 0.09 }} ]\n\
         zones = [\"us-east-1a\", \"us-east-1b\", \"us-east-1c\"]\nmax_capacity = 10\n{extra}\n"
    );
    config::parse(Path::new("t.toml"), &text)
        .expect("valid")
        .pools
        .remove("builders")
        .expect("the pool")
}

fn places() -> Vec<Placement> {
    ZONES
        .iter()
        .map(|z| Placement {
            zone: (*z).to_owned(),
            subnet: None,
        })
        .collect()
}

fn prices(large: f64, xlarge: f64) -> Vec<SpotPrice> {
    let mut out = Vec::new();
    for z in ZONES {
        for (t, p) in [("c7i.large", large), ("c7i.xlarge", xlarge)] {
            out.push(SpotPrice {
                instance_type: t.into(),
                zone: z.into(),
                price: p,
            });
        }
    }
    out
}

fn member(n: u32, ty: &str, zone: &str, market: Market, age_s: u64) -> Member<'static> {
    Member {
        id: std::borrow::Cow::Owned(InstanceId::new(format!("i-{n:017x}"))),
        instance_type: ty.to_owned().into(),
        zone: Some(zone.to_owned().into()),
        market,
        launched_at: Some(SystemTime::now() - Duration::from_secs(age_s)),
    }
}

struct Case<'a> {
    spec: &'a PoolSpec,
    demand: Result<u64, String>,
    members: Vec<Member<'static>>,
    open: Vec<OpenRequest>,
    prices: Vec<SpotPrice>,
    unavailable: HashSet<spotkeeper_cloud::Offering>,
    risky: HashSet<spotkeeper_cloud::Offering>,
    spot_blocked: bool,
    surplus_since: Option<SystemTime>,
    last_desired: Option<u32>,
}

impl<'a> Case<'a> {
    fn new(spec: &'a PoolSpec, demand: u64) -> Self {
        Self {
            spec,
            demand: Ok(demand),
            members: Vec::new(),
            open: Vec::new(),
            prices: prices(0.04, 0.07),
            unavailable: HashSet::new(),
            risky: HashSet::new(),
            spot_blocked: false,
            surplus_since: None,
            last_desired: None,
        }
    }

    fn plan(&self) -> spotkeeper_engine::pools::plan::Plan {
        let places = places();
        plan(&Input {
            spec: self.spec,
            demand: self.demand.clone(),
            last_desired: self.last_desired,
            members: &self.members,
            open_requests: &self.open,
            prices: &self.prices,
            placements: &places,
            unavailable: &self.unavailable,
            risky: &self.risky,
            spot_blocked: self.spot_blocked,
            surplus_since: self.surplus_since,
            now: SystemTime::now(),
        })
    }
}

fn launched_units(p: &spotkeeper_engine::pools::plan::Plan) -> u32 {
    p.steps
        .iter()
        .map(|s| match s {
            Step::Launch(b) => b.count * b.capacity,
            _ => 0,
        })
        .sum()
}

fn launches(p: &spotkeeper_engine::pools::plan::Plan) -> Vec<(String, String, Market, u32)> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Launch(b) => Some((b.instance_type.clone(), b.zone.clone(), b.market, b.count)),
            _ => None,
        })
        .collect()
}

/// The plan gives a reason that says `what`.
fn says(p: &spotkeeper_engine::pools::plan::Plan, what: &str) {
    assert!(
        p.reasons.iter().any(|r| r.contains(what)),
        "{:?}",
        p.reasons
    );
}

#[test]
fn desired_is_pending_over_jobs_per_capacity_clamped_to_min_and_max() {
    let spec = pool("min_capacity = 2\njobs_per_capacity = 3");
    assert_eq!(Case::new(&spec, 0).plan().desired, 2);
    assert_eq!(Case::new(&spec, 7).plan().desired, 3); // ceil(7/3)
    assert_eq!(Case::new(&spec, 1000).plan().desired, 10);
}

#[test]
fn capacity_weights_count_and_the_cheapest_per_unit_wins() {
    let spec = pool("");
    // xlarge: 0.07 for 2 units = 0.035/unit, cheaper than large's 0.04.
    let p = Case::new(&spec, 6).plan();
    assert_eq!(launched_units(&p), 6);
    assert!(
        launches(&p)
            .iter()
            .all(|(t, _, m, _)| t == "c7i.xlarge" && *m == Market::Spot),
        "{:?}",
        p.steps
    );
    // Spread over the three zones, one batch (one call) per zone.
    let zones: HashSet<String> = launches(&p).into_iter().map(|(_, z, _, _)| z).collect();
    assert_eq!(zones.len(), 3, "{:?}", p.steps);
    assert_eq!(launches(&p).len(), 3);
    // Existing xlarge instances count 2 units each.
    let mut case = Case::new(&spec, 6);
    case.members = vec![
        member(1, "c7i.xlarge", "us-east-1a", Market::Spot, 60),
        member(2, "c7i.xlarge", "us-east-1b", Market::Spot, 60),
    ];
    let p = case.plan();
    assert_eq!(p.current, 4);
    assert_eq!(launched_units(&p), 2);
    assert_eq!(
        launches(&p),
        vec![("c7i.xlarge".into(), "us-east-1c".into(), Market::Spot, 1)]
    );
}

#[test]
fn a_type_over_its_max_price_is_excluded() {
    let spec = pool("");
    let mut case = Case::new(&spec, 4);
    case.prices = prices(0.04, 0.10); // xlarge over its 0.09 ceiling
    let p = case.plan();
    assert!(
        launches(&p).iter().all(|(t, ..)| t == "c7i.large"),
        "{:?}",
        p.steps
    );
    assert_eq!(launched_units(&p), 4);
    says(&p, "over the price ceiling");
}

#[test]
fn unavailable_offerings_are_skipped_and_diversification_keeps_to_near_cheapest() {
    let spec = pool("");
    let mut case = Case::new(&spec, 4);
    for z in ["us-east-1a", "us-east-1b"] {
        case.unavailable.insert(spotkeeper_cloud::Offering::new(
            "c7i.xlarge",
            z,
            Market::Spot,
        ));
    }
    let p = case.plan();
    // xlarge only in 1c (0.035/unit); large at 0.04/unit is within 20 % and
    // takes part too, in every zone.
    let l = launches(&p);
    assert!(
        !l.iter()
            .any(|(t, z, ..)| t == "c7i.xlarge" && z != "us-east-1c"),
        "{l:?}"
    );
    assert_eq!(launched_units(&p), 4);
    // A much dearer type is left out while a cheap one is available.
    let mut case = Case::new(&spec, 4);
    case.prices = prices(0.09, 0.07);
    let l = launches(&case.plan());
    assert!(l.iter().all(|(t, ..)| t == "c7i.xlarge"), "{l:?}");
}

#[test]
fn max_capacity_is_never_exceeded_even_with_open_requests_in_flight() {
    let spec = pool("");
    let mut case = Case::new(&spec, 100);
    case.members = (0..4)
        .map(|n| member(n, "c7i.large", ZONES[n as usize % 3], Market::Spot, 60))
        .collect();
    case.open = (0..3)
        .map(|n| OpenRequest {
            id: SpotRequestId::new(format!("sir-{n:08x}")),
            instance_type: Some("c7i.xlarge".into()),
        })
        .collect();
    let p = case.plan();
    assert_eq!(p.current, 10);
    assert_eq!(p.pending, 6);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    // 9 of 10 used; only xlarge (2 units) offered: nothing fits, nothing launched.
    let mut case = Case::new(&spec, 100);
    case.members = (0..9)
        .map(|n| member(n, "c7i.large", ZONES[n as usize % 3], Market::Spot, 60))
        .collect();
    case.prices = prices(0.50, 0.07); // large over... no ceiling on large
    case.unavailable = ZONES
        .iter()
        .map(|z| spotkeeper_cloud::Offering::new("c7i.large", *z, Market::Spot))
        .collect();
    let p = case.plan();
    assert_eq!(launched_units(&p), 0, "{:?}", p.steps);
    says(&p, "exceed max_capacity");
}

#[test]
fn surplus_cancels_open_requests_first_then_waits_then_terminates_on_demand_and_newest_first() {
    let spec = pool("scale_down_after = \"10m\"");
    let mut case = Case::new(&spec, 1);
    case.members = vec![
        member(1, "c7i.large", "us-east-1a", Market::Spot, 3600),
        member(2, "c7i.large", "us-east-1b", Market::Spot, 60),
        member(3, "c7i.large", "us-east-1c", Market::OnDemand, 3000),
        member(4, "c7i.large", "us-east-1a", Market::Spot, 600),
    ];
    case.open = vec![OpenRequest {
        id: SpotRequestId::new("sir-00000001"),
        instance_type: Some("c7i.large".into()),
    }];
    let p = case.plan();
    assert_eq!(
        p.steps,
        vec![Step::Cancel {
            requests: vec![SpotRequestId::new("sir-00000001")]
        }]
    );
    let since = p.surplus_since.expect("the idle clock starts");
    // Not yet idle long enough: nothing terminated, the clock kept.
    case.open.clear();
    case.surplus_since = Some(since);
    let p = case.plan();
    assert!(p.steps.is_empty());
    assert_eq!(p.surplus_since, Some(since));
    // Idle past scale_down_after: on-demand first, then the newest spot ones.
    case.surplus_since = Some(SystemTime::now() - Duration::from_secs(601));
    let p = case.plan();
    assert_eq!(
        p.steps,
        vec![Step::Terminate {
            instances: vec![
                InstanceId::new(format!("i-{:017x}", 3)),
                InstanceId::new(format!("i-{:017x}", 2)),
                InstanceId::new(format!("i-{:017x}", 4)),
            ]
        }]
    );
    // Back at desired: the clock stops.
    case.members.truncate(1);
    assert_eq!(case.plan().surplus_since, None);
}

#[test]
fn an_unknown_demand_holds_the_pool_it_never_shrinks() {
    let spec = pool("scale_down_after = \"0s\"");
    let mut case = Case::new(&spec, 0);
    case.demand = Err("HTTP 500".into());
    case.last_desired = Some(5);
    case.members = (0..7)
        .map(|n| member(n, "c7i.large", "us-east-1a", Market::Spot, 60))
        .collect();
    let p = case.plan();
    assert_eq!(p.desired, 5);
    assert!(p.held.is_some());
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    // Still refills to the last desired (an interruption while the queue is down).
    case.members.truncate(3);
    let p = case.plan();
    assert_eq!(launched_units(&p), 2);
}

#[test]
fn without_spot_fallback_goes_on_demand_in_the_preferred_type() {
    let spec = pool("fallback = \"on-demand\"");
    let mut case = Case::new(&spec, 3);
    case.spot_blocked = true;
    let l = launches(&case.plan());
    assert!(
        l.iter()
            .all(|(t, _, m, _)| t == "c7i.large" && *m == Market::OnDemand),
        "{l:?}"
    );
    // No fallback: the pool stays short and says so.
    let spec = pool("");
    let mut case = Case::new(&spec, 3);
    case.spot_blocked = true;
    let p = case.plan();
    assert!(p.steps.is_empty());
    says(&p, "no offering");
}

// ---- the pass, on FakeCloud ----

struct FixedDemand(Mutex<Result<u64, String>>);

#[async_trait]
impl DemandReader for FixedDemand {
    async fn pending(&self, _demand: &Demand) -> Result<u64, String> {
        self.0.lock().expect("lock").clone()
    }
}

fn fake() -> FakeCloud {
    let cloud = FakeCloud::new(&ZONES);
    for z in ZONES {
        cloud.set_price("c7i.large", z, 0.04);
        cloud.set_price("c7i.xlarge", z, 0.07);
    }
    cloud
}

async fn world(cloud: &FakeCloud) -> World {
    let filter = spotkeeper_cloud::TagFilter::default().with(tags::OWNER, "tester");
    World {
        instances: std::sync::Arc::new(cloud.instances(&filter).await.expect("describe")),
        requests: cloud.spot_requests(&filter).await.expect("requests"),
        zones: ZONES.iter().map(|z| (*z).to_owned()).collect(),
        doomed: HashSet::new(),
        prices: None,
        index: Default::default(),
        risky: HashSet::new(),
    }
}

fn pass_over<'a>(cloud: &'a FakeCloud, store: &'a Store, demand: &'a FixedDemand) -> PoolPass<'a> {
    PoolPass {
        cloud,
        store,
        owner: "tester",
        demand,
    }
}

/// One pass with nothing marked unavailable and no memory.
async fn once(
    pass: &PoolPass<'_>,
    spec: &PoolSpec,
    cloud: &FakeCloud,
) -> spotkeeper_engine::pools::pass::Outcome {
    try_once(pass, spec, cloud).await.expect("pass")
}

/// One pass with nothing marked or remembered, as it came out.
async fn try_once(
    pass: &PoolPass<'_>,
    spec: &PoolSpec,
    cloud: &FakeCloud,
) -> Result<spotkeeper_engine::pools::pass::Outcome, spotkeeper_engine::pools::PoolError> {
    pass.run(
        spec,
        &world(cloud).await,
        &HashSet::new(),
        false,
        &PoolMemory::default(),
        SystemTime::now(),
    )
    .await
}

fn live(cloud: &FakeCloud) -> Vec<spotkeeper_cloud::Instance> {
    cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.state.is_live())
        .collect()
}

/// FakeCloud, an empty state store and a demand source answering `demand`.
async fn setup(demand: Result<u64, String>) -> (FakeCloud, Store, FixedDemand) {
    (
        fake(),
        common::store().await,
        FixedDemand(Mutex::new(demand)),
    )
}

/// The pool's launches recorded and not yet closed.
async fn open_launches(store: &Store) -> Vec<spotkeeper_engine::store::PoolLaunch> {
    store
        .for_owner("tester")
        .open_pool_launches("builders")
        .await
        .expect("open launches")
}

#[tokio::test]
async fn a_pass_launches_in_batches_tagged_at_creation_with_an_intent_each() {
    let (cloud, store, demand) = setup(Ok(7)).await;
    let pass = pass_over(&cloud, &store, &demand);
    let spec = pool("");
    let out = once(&pass, &spec, &cloud).await;
    let units: u32 = live(&cloud)
        .iter()
        .map(|i| spec.capacity_of(&i.instance_type))
        .sum();
    assert!((7..=8).contains(&units), "{units}");
    // One RunInstances per offering, not per instance.
    assert_eq!(cloud.count("RunInstances"), out.plan.steps.len());
    assert!(cloud.count("RunInstances") <= 3 + 1);
    for i in live(&cloud) {
        assert_eq!(i.tag(tags::POOL), Some("builders"));
        assert_eq!(i.tag(tags::OWNER), Some("tester"));
        assert!(i.tag(tags::INTENT).is_some());
    }
    assert!(open_launches(&store).await.is_empty());
    // A second pass at the same demand launches nothing.
    let before = cloud.count("RunInstances");
    once(&pass, &spec, &cloud).await;
    assert_eq!(cloud.count("RunInstances"), before);
}

#[tokio::test]
async fn insufficient_capacity_marks_the_offering_and_the_same_pass_uses_the_next() {
    let cloud = fake();
    for z in ZONES {
        cloud.refuse(
            "c7i.xlarge",
            z,
            Market::Spot,
            "InsufficientInstanceCapacity",
        );
    }
    let store = common::store().await;
    let demand = FixedDemand(Mutex::new(Ok(4)));
    let pass = pass_over(&cloud, &store, &demand);
    let spec = pool("");
    let out = once(&pass, &spec, &cloud).await;
    let l = live(&cloud);
    assert_eq!(l.len(), 4, "{:?}", out.failures);
    assert!(l.iter().all(|i| i.instance_type == "c7i.large"));
    assert!(
        out.failures
            .iter()
            .all(|f| f.reason == "insufficient-capacity")
    );
    assert!(!out.marks.is_empty());
    let events = store
        .for_owner("tester")
        .pool_events("builders", 50)
        .await
        .expect("events");
    assert!(events.iter().any(|e| e.kind == "no-capacity"), "{events:?}");
}

#[tokio::test]
async fn a_spot_quota_falls_back_to_on_demand_and_spot_returns_once_the_block_lifts() {
    let cloud = fake();
    for z in ZONES {
        for t in ["c7i.large", "c7i.xlarge"] {
            cloud.refuse(t, z, Market::Spot, "MaxSpotInstanceCountExceeded");
        }
    }
    let store = common::store().await;
    let demand = FixedDemand(Mutex::new(Ok(2)));
    let pass = pass_over(&cloud, &store, &demand);
    let spec = pool("fallback = \"on-demand\"");
    let out = once(&pass, &spec, &cloud).await;
    assert!(out.block_spot);
    assert!(out.failures.iter().any(|f| f.reason == "quota-exceeded"));
    let l = live(&cloud);
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|i| i.market == Market::OnDemand));
    let events = store
        .for_owner("tester")
        .pool_events("builders", 50)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "quota" && e.message.contains("on-demand")),
        "{events:?}"
    );
    // The quota clears and the block expires: new capacity is spot again.
    cloud.accept();
    *demand.0.lock().expect("lock") = Ok(4);
    once(&pass, &spec, &cloud).await;
    let spot: u32 = live(&cloud)
        .iter()
        .filter(|i| i.market == Market::Spot)
        .map(|i| spec.capacity_of(&i.instance_type))
        .sum();
    assert_eq!(spot, 2, "{:?}", live(&cloud));
    // And when the pool shrinks, the on-demand instances go first.
    *demand.0.lock().expect("lock") = Ok(2);
    let spec0 = pool("fallback = \"on-demand\"\nscale_down_after = \"0s\"");
    once(&pass, &spec0, &cloud).await;
    let l = live(&cloud);
    assert!(!l.is_empty());
    assert!(l.iter().all(|i| i.market == Market::Spot), "{l:?}");
}

#[tokio::test]
async fn an_authorization_error_stops_the_pass_and_is_reported() {
    let cloud = fake();
    cloud.fail_next("RunInstances", "UnauthorizedOperation");
    let store = common::store().await;
    let demand = FixedDemand(Mutex::new(Ok(6)));
    let pass = pass_over(&cloud, &store, &demand);
    let out = once(&pass, &pool(""), &cloud).await;
    assert_eq!(
        cloud.count("RunInstances"),
        1,
        "no further launches after a refusal"
    );
    assert_eq!(out.failures[0].reason, "unauthorized");
    let events = store
        .for_owner("tester")
        .pool_events("builders", 50)
        .await
        .expect("events");
    assert!(events.iter().any(|e| e.kind == "unauthorized"));
}

#[tokio::test]
async fn a_launch_left_open_by_a_crash_is_repeated_with_its_token_and_makes_no_duplicates() {
    let (cloud, store, demand) = setup(Ok(2)).await;
    let pass = pass_over(&cloud, &store, &demand);
    let spec = pool("");
    // The answer is lost: the intent stays open; the instances exist but the
    // describe does not show them yet.
    cloud.lose_next_launch_answer();
    cloud.set_describe_lag(1);
    let _ = try_once(&pass, &spec, &cloud).await;
    assert_eq!(open_launches(&store).await.len(), 1);
    let first = cloud.all_instances().len();
    // Next pass: the open intent is repeated (same token → same instances).
    once(&pass, &spec, &cloud).await;
    assert!(open_launches(&store).await.is_empty());
    assert_eq!(cloud.all_instances().len(), first, "no second launch");

    // Lost again, but this time the describe shows the instances: the intent
    // is closed by their tag, without another RunInstances.
    *demand.0.lock().expect("lock") = Ok(4);
    cloud.set_describe_lag(0);
    cloud.lose_next_launch_answer();
    let _ = try_once(&pass, &spec, &cloud).await;
    let calls = cloud.count("RunInstances");
    let open = store
        .for_owner("tester")
        .open_pool_launches("builders")
        .await
        .expect("q");
    assert!(!open.is_empty());
    once(&pass, &spec, &cloud).await;
    assert_eq!(cloud.count("RunInstances"), calls, "nothing repeated");
    assert!(open_launches(&store).await.is_empty());
}

#[tokio::test]
async fn open_spot_requests_count_and_interrupted_members_do_not() {
    let (cloud, store, demand) = setup(Ok(3)).await;
    let pass = pass_over(&cloud, &store, &demand);
    let spec = pool("");
    let mut request_tags = std::collections::BTreeMap::new();
    request_tags.insert(tags::OWNER.to_owned(), "tester".to_owned());
    request_tags.insert(tags::POOL.to_owned(), "builders".to_owned());
    cloud.insert_spot_request(SpotRequest {
        id: SpotRequestId::new("sir-open0001"),
        state: SpotRequestState::Open,
        instance_id: None,
        instance_type: Some("c7i.large".into()),
        status: None,
        tags: request_tags,
    });
    once(&pass, &spec, &cloud).await;
    let units: u32 = live(&cloud)
        .iter()
        .map(|i| spec.capacity_of(&i.instance_type))
        .sum();
    assert_eq!(units, 2, "3 wanted, 1 in an open request");
    // An instance warned of interruption stops counting: the pool refills now.
    let mut w = world(&cloud).await;
    let victim = live(&cloud)[0].id.clone();
    w.doomed.insert(victim.clone());
    pass.run(
        &spec,
        &w,
        &HashSet::new(),
        false,
        &PoolMemory::default(),
        SystemTime::now(),
    )
    .await
    .expect("pass");
    cloud.set_state(&victim, InstanceState::Terminated);
    let units: u32 = live(&cloud)
        .iter()
        .map(|i| spec.capacity_of(&i.instance_type))
        .sum();
    assert!(units >= 2, "{units}");
}

#[test]
fn the_last_units_come_from_a_dearer_type_when_the_cheap_one_would_overshoot_max() {
    let spec = pool("");
    let mut case = Case::new(&spec, 100);
    // xlarge is far cheaper per unit; 9 of 10 units run: one more unit fits
    // only as a c7i.large.
    case.prices = prices(0.06, 0.06);
    case.members = vec![
        member(1, "c7i.xlarge", "us-east-1a", Market::Spot, 60),
        member(2, "c7i.xlarge", "us-east-1b", Market::Spot, 60),
        member(3, "c7i.xlarge", "us-east-1c", Market::Spot, 60),
        member(4, "c7i.xlarge", "us-east-1c", Market::Spot, 60),
        member(5, "c7i.large", "us-east-1a", Market::Spot, 60),
    ];
    let p = case.plan();
    assert_eq!(p.current, 9);
    let l = launches(&p);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].0, "c7i.large");
    assert_eq!(l[0].3, 1);
}

fn terminated(p: &spotkeeper_engine::pools::plan::Plan) -> Vec<InstanceId> {
    p.steps
        .iter()
        .flat_map(|s| match s {
            Step::Terminate { instances } => instances.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn members_over_the_ceiling_are_replaced_first_then_terminated() {
    let spec = pool("max_price = 0.05\nmin_capacity = 2");
    let mut case = Case::new(&spec, 0);
    // c7i.large is over its 0.05 ceiling in us-east-1a only.
    case.prices = prices(0.04, 0.07);
    for p in case.prices.iter_mut() {
        if p.instance_type == "c7i.large" && p.zone == "us-east-1a" {
            p.price = 0.08;
        }
    }
    case.members = vec![
        member(1, "c7i.large", "us-east-1a", Market::Spot, 3600),
        member(2, "c7i.large", "us-east-1a", Market::Spot, 3600),
    ];
    let p = case.plan();
    assert_eq!(p.current, 0, "{:?}", p.reasons);
    assert_eq!(launched_units(&p), 2);
    assert!(
        launches(&p)
            .iter()
            .all(|l| !(l.0 == "c7i.large" && l.1 == "us-east-1a")),
        "never the offering over its ceiling: {:?}",
        launches(&p)
    );
    assert!(terminated(&p).is_empty(), "the replacements come first");
    // The replacements are there: the over-ceiling ones go.
    case.members
        .push(member(3, "c7i.large", "us-east-1b", Market::Spot, 10));
    case.members
        .push(member(4, "c7i.large", "us-east-1c", Market::Spot, 10));
    let p = case.plan();
    assert_eq!(launched_units(&p), 0);
    assert_eq!(
        terminated(&p),
        [
            case.members[0].id.clone().into_owned(),
            case.members[1].id.clone().into_owned()
        ]
    );

    // With nowhere under the ceiling, nothing moves.
    case.members.truncate(2);
    case.prices = prices(0.08, 0.2);
    let p = case.plan();
    assert_eq!((p.current, terminated(&p).len()), (2, 0), "{:?}", p.reasons);
}

#[test]
fn max_lifetime_replaces_old_members_a_quarter_at_a_time() {
    let spec = pool("max_price = 0.05\nmin_capacity = 8\nmax_lifetime = \"12h\"");
    let mut case = Case::new(&spec, 0);
    case.members = (0..8)
        .map(|n| {
            member(
                n,
                "c7i.large",
                ZONES[n as usize % 3],
                Market::Spot,
                13 * 3600 + u64::from(n),
            )
        })
        .collect();
    let p = case.plan();
    assert_eq!(p.current, 6, "two of eight retire at once: {:?}", p.reasons);
    assert_eq!(launched_units(&p), 2);
    assert!(terminated(&p).is_empty());
    // Two replacements later: the two oldest go, and only them.
    case.members
        .push(member(100, "c7i.large", "us-east-1a", Market::Spot, 5));
    case.members
        .push(member(101, "c7i.large", "us-east-1b", Market::Spot, 5));
    let p = case.plan();
    assert_eq!(launched_units(&p), 0, "{:?}", p.reasons);
    assert_eq!(
        terminated(&p),
        [
            InstanceId::new(format!("i-{:017x}", 7)),
            InstanceId::new(format!("i-{:017x}", 6))
        ]
    );
}

#[tokio::test]
async fn a_pass_right_after_a_fill_counts_the_launches_aws_does_not_list_yet() {
    let (cloud, store, demand) = setup(Ok(3)).await;
    let pass = pass_over(&cloud, &store, &demand);
    let spec = pool("");
    // AWS's eventual consistency: the new instances stay out of the next
    // describes.
    cloud.set_describe_lag(3);
    once(&pass, &spec, &cloud).await;
    let after_fill = cloud.all_instances().len();
    assert!(after_fill >= 2, "the pool was filled: {after_fill}");
    once(&pass, &spec, &cloud).await;
    once(&pass, &spec, &cloud).await;
    assert_eq!(
        cloud.all_instances().len(),
        after_fill,
        "passes that do not see the new instances launch nothing more"
    );
}

#[test]
fn offerings_this_owner_saw_interrupted_over_and_over_are_filled_last() {
    let spec = pool("");
    // The cheapest per unit (xlarge) was a storm in zone a: the pool goes
    // to its other zones first.
    let mut case = Case::new(&spec, 4);
    case.risky = HashSet::from([spotkeeper_cloud::Offering::new(
        "c7i.xlarge",
        "us-east-1a",
        Market::Spot,
    )]);
    let p = case.plan();
    assert_eq!(launched_units(&p), 4);
    assert!(
        launches(&p)
            .iter()
            .all(|(t, z, ..)| t == "c7i.xlarge" && z != "us-east-1a"),
        "{:?}",
        p.steps
    );
    // Every xlarge offering risky: the larges, dearer per unit, first.
    case.risky = ZONES
        .iter()
        .map(|z| spotkeeper_cloud::Offering::new("c7i.xlarge", *z, Market::Spot))
        .collect();
    let p = case.plan();
    assert!(
        launches(&p).iter().all(|(t, ..)| t == "c7i.large"),
        "{:?}",
        p.steps
    );
}

#[test]
fn a_pools_strategy_is_read_and_defaults_to_price_capacity() {
    use spotkeeper_engine::rank::Strategy;
    assert_eq!(pool("").strategy, Strategy::PriceCapacity);
    assert_eq!(pool("strategy = \"cheapest\"").strategy, Strategy::Cheapest);
}
