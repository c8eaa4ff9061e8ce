//! Benchmark: one planning pass of the worker-pool planner over 50 pools,
//! 10,000 instances and 20 offerings (4 types × 5 zones): the pure part of a
//! daemon pass (indexing the owner's instances by pool, picking each pool's
//! members, then `plan`). Prints the time per pass and the heap allocations per pass
//! (counted with dhat). Not a test: nothing is asserted.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{ImageRef, Instance, InstanceId, InstanceState, Market, SpotPrice};
use spotkeeper_engine::config::LaunchTemplate;
use spotkeeper_engine::pools::pass::World;
use spotkeeper_engine::pools::plan::{Input, Placement, plan};
use spotkeeper_engine::pools::{Demand, PoolSpec, PoolType};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const POOLS: usize = 50;
const INSTANCES: usize = 10_000;
const TYPES: [(&str, u32); 4] = [
    ("c7i.large", 1),
    ("c7i.xlarge", 2),
    ("m7i.large", 1),
    ("m7i.2xlarge", 4),
];
const ZONES: [&str; 5] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1f",
];

fn spec(n: usize) -> PoolSpec {
    PoolSpec {
        name: format!("pool-{n}"),
        launch: LaunchTemplate {
            image: ImageRef::parse("ami-0123456789abcdef0").expect("image"),
            zones: Some(ZONES.iter().map(|z| (*z).to_owned()).collect()),
            key_name: None,
            security_groups: Vec::new(),
            user_data: None,
            tags: BTreeMap::new(),
            iam_instance_profile: None,
            root_disk: None,
            fallback_on_demand: true,
            metadata_tokens: Default::default(),
        },
        types: TYPES
            .iter()
            .map(|(t, c)| PoolType {
                instance_type: (*t).to_owned(),
                capacity: *c,
                max_price: None,
            })
            .collect(),
        max_price: Some(0.5),
        subnets: Vec::new(),
        min_capacity: 0,
        max_capacity: 1000,
        jobs_per_capacity: 1,
        scale_down_after: Duration::from_secs(600),
        max_lifetime: None,
        demand: Demand::None,
        on_interruption: None,
        strategy: Default::default(),
    }
}

fn main() {
    let pools: Vec<PoolSpec> = (0..POOLS).map(spec).collect();
    let now = SystemTime::now();
    let instances: Vec<Instance> = (0..INSTANCES)
        .map(|i| {
            let (t, _) = TYPES[i % TYPES.len()];
            let mut tags_ = BTreeMap::new();
            tags_.insert(tags::OWNER.to_owned(), "bench".to_owned());
            tags_.insert(tags::POOL.to_owned(), format!("pool-{}", i % POOLS));
            Instance {
                id: InstanceId::new(format!("i-{i:017x}")),
                state: InstanceState::Running,
                instance_type: t.to_owned(),
                zone: Some(ZONES[i % ZONES.len()].to_owned()),
                market: if i % 10 == 0 {
                    Market::OnDemand
                } else {
                    Market::Spot
                },
                spot_request_id: None,
                public_ip: None,
                private_ip: None,
                launched_at: Some(now - Duration::from_secs(i as u64)),
                image_id: None,
                subnet_id: None,
                vpc_id: None,
                tags: tags_,
            }
        })
        .collect();
    let prices: Vec<SpotPrice> = TYPES
        .iter()
        .enumerate()
        .flat_map(|(ti, (t, _))| {
            ZONES.iter().enumerate().map(move |(zi, z)| SpotPrice {
                instance_type: (*t).to_owned(),
                zone: (*z).to_owned(),
                price: 0.02 + 0.003 * ti as f64 + 0.001 * zi as f64,
            })
        })
        .collect();
    let placements: Vec<Placement> = ZONES
        .iter()
        .map(|z| Placement {
            zone: (*z).to_owned(),
            subnet: None,
        })
        .collect();
    let mut unavailable = HashSet::new();
    unavailable.insert(spotkeeper_cloud::Offering::new(
        "c7i.large",
        "us-east-1a",
        Market::Spot,
    ));
    let doomed = HashSet::new();
    // Each pool runs 200 instances (~400 units); demands put a third of the
    // pools short by 100 units, a third over (surplus, idle), a third level.
    let demand = |n: usize| -> u64 {
        match n % 3 {
            0 => 500,
            1 => 300,
            _ => 400,
        }
    };
    let instances = std::sync::Arc::new(instances);
    let pass = || {
        // What the daemon builds per pass: a world sharing the observation's
        // instances (no copy), indexed by pool on first use.
        let world = World {
            instances: instances.clone(),
            requests: Vec::new(),
            zones: Vec::new(),
            doomed: doomed.clone(),
            prices: None,
            index: Default::default(),
            risky: Default::default(),
        };
        let mut steps = 0;
        for (n, spec) in pools.iter().enumerate() {
            let members = world.members(spec);
            let p = plan(&Input {
                spec,
                demand: Ok(demand(n)),
                last_desired: None,
                members: &members,
                open_requests: &[],
                prices: &prices,
                placements: &placements,
                unavailable: &unavailable,
                risky: &unavailable,
                spot_blocked: false,
                surplus_since: Some(now - Duration::from_secs(3600)),
                now,
            });
            steps += p.steps.len();
        }
        steps
    };
    // Warm up, then time.
    let steps = pass();
    const ROUNDS: u32 = 20;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(pass());
    }
    let per_pass = started.elapsed() / ROUNDS;
    // Allocations of one pass.
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get();
    std::hint::black_box(pass());
    let after = dhat::HeapStats::get();
    println!(
        "pool planner: {POOLS} pools, {INSTANCES} instances, {} offerings, {steps} steps per pass",
        TYPES.len() * ZONES.len()
    );
    println!(
        "  time per pass:        {:.2} ms (mean of {ROUNDS}, {}; goal < 5 ms optimised)",
        per_pass.as_secs_f64() * 1000.0,
        if cfg!(debug_assertions) {
            "unoptimised: run it with scripts/bench"
        } else {
            "optimised"
        }
    );
    println!(
        "  allocations per pass: {} blocks, {} bytes (goal < 5,000 blocks)",
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes
    );
}
