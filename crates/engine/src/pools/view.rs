//! What `pool list|show` and `GET /api/pools` show: a pool's capacity now
//! (observed by tag), by type and zone, and the last pass's decisions.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use spotkeeper_cloud::Cloud;
use spotkeeper_cloud::model::tags;

use super::pass::{members, open_requests};
use super::{PoolError, PoolSpec};
use crate::ownership::owner_filter;
use crate::store::{Event, Store};

/// One pool, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// Pool name.
    pub name: String,
    /// `config` or `api`.
    pub source: String,
    /// min..=max capacity.
    pub min_capacity: u32,
    /// Max capacity.
    pub max_capacity: u32,
    /// Desired capacity of the last pass (none yet: the daemon has not run).
    pub desired: Option<i64>,
    /// Unix seconds of the last pass.
    pub last_pass_at: Option<i64>,
    /// Capacity units live now (instances) plus open requests.
    pub current: u32,
    /// Units in open spot requests.
    pub pending: u32,
    /// Live instances.
    pub instances: usize,
    /// Units by `type zone market`.
    pub by_offering: BTreeMap<String, u32>,
    /// Why the last pass held the pool, if it did.
    pub held: Option<String>,
    /// The last pass's reasons.
    pub reasons: Vec<String>,
    /// The last pass's plan, failures and spot block, as saved.
    pub last_pass: Option<serde_json::Value>,
    /// Recent events (newest first).
    pub events: Vec<Event>,
    /// Unix seconds of the look at AWS the figures above come from (the
    /// API's is the daemon's last pass; none before its first).
    pub observed_at: Option<i64>,
}

/// Views of `pools`, from one describe of instances and spot requests.
pub async fn view(
    cloud: &dyn Cloud,
    store: &Store,
    owner: &str,
    pools: &[(PoolSpec, String)],
    events: i64,
) -> Result<Vec<PoolView>, PoolError> {
    // One pool: only its instances; several: every pool instance at once.
    let filter = match pools {
        [(one, _)] => owner_filter(owner).with(tags::POOL, &one.name),
        _ => owner_filter(owner).with_key(tags::POOL),
    };
    let instances = cloud.instances(&filter).await?;
    let requests = cloud.spot_requests(&filter).await?;
    let now = Some(crate::store::unix_now());
    view_of(&instances, &requests, now, store, owner, pools, events).await
}

/// Views of `pools` from instances and spot requests already described
/// (the API's: the daemon's last observation, no call of its own).
pub async fn view_of(
    instances: &[spotkeeper_cloud::Instance],
    requests: &[spotkeeper_cloud::SpotRequest],
    observed_at: Option<i64>,
    store: &Store,
    owner: &str,
    pools: &[(PoolSpec, String)],
    events: i64,
) -> Result<Vec<PoolView>, PoolError> {
    let status = store.for_owner(owner).pool_status(None).await?;
    let mut out = Vec::new();
    for (spec, source) in pools {
        let live = members(spec, instances, &HashSet::new());
        let open = open_requests(spec, requests);
        let mut by_offering = BTreeMap::new();
        for m in &live {
            *by_offering
                .entry(format!(
                    "{} {} {}",
                    m.instance_type,
                    m.zone.as_deref().unwrap_or("?"),
                    m.market.as_str()
                ))
                .or_insert(0) += spec.capacity_of(&m.instance_type);
        }
        let pending = super::plan::request_units(spec, &open);
        let current = by_offering.values().sum::<u32>() + pending;
        let last = status.iter().find(|s| s.pool == spec.name);
        let last_pass: Option<serde_json::Value> =
            last.and_then(|s| serde_json::from_str(&s.plan).ok());
        let reasons = last_pass
            .as_ref()
            .and_then(|v| v["plan"]["reasons"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        let held = last_pass
            .as_ref()
            .and_then(|v| v["plan"]["held"].as_str().map(str::to_owned));
        out.push(PoolView {
            name: spec.name.clone(),
            source: source.clone(),
            min_capacity: spec.min_capacity,
            max_capacity: spec.max_capacity,
            desired: last.map(|s| s.desired),
            last_pass_at: last.map(|s| s.at),
            current,
            pending,
            instances: live.len(),
            by_offering,
            held,
            reasons,
            last_pass,
            events: store
                .for_owner(owner)
                .pool_events(&spec.name, events)
                .await?,
            observed_at,
        });
    }
    Ok(out)
}
