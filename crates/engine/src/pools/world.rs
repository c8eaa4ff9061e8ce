//! What a pass of all pools observed once, shared by the pools' tasks, and
//! its index of instances by pool.

use std::collections::HashSet;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Instance, InstanceId, InstanceState, SpotRequest};

use super::PoolSpec;
use super::plan::Member;
use crate::tag_index::TagIndex;

/// What a pass of all pools observed once: every instance and spot request
/// with the owner tag, the region's zones, and the instances warned of
/// interruption.
#[derive(Debug, Default)]
pub struct World {
    /// Instances with the owner tag (the daemon's observation's, shared).
    pub instances: std::sync::Arc<Vec<Instance>>,
    /// Spot requests with the owner tag.
    pub requests: Vec<SpotRequest>,
    /// Zones of the region.
    pub zones: Vec<String>,
    /// Instances about to be taken (spot warnings): not counted.
    pub doomed: HashSet<InstanceId>,
    /// Spot prices read once for every pool's types and zones; `None`: each
    /// pool reads its own.
    pub prices: Option<Vec<spotkeeper_cloud::SpotPrice>>,
    /// `instances` by pool, built on first use.
    pub index: PoolIndex,
    /// Offerings this owner saw interrupted over and over (last 30 days):
    /// launched in last by pools whose strategy weighs risk.
    pub risky: HashSet<super::plan::OfferingKey>,
}

/// [`World::instances`] by pool, built on first use ([`TagIndex`]): a pass
/// over 50 pools looks at each instance twice, not once per pool.
#[derive(Debug, Default)]
pub struct PoolIndex(std::sync::OnceLock<TagIndex>);

impl World {
    /// The live members of `spec`'s pool (borrowing from the world).
    pub fn members(&self, spec: &PoolSpec) -> Vec<Member<'_>> {
        let index = self
            .index
            .0
            .get_or_init(|| TagIndex::build(&self.instances, |i| i.tag(tags::POOL)));
        let at = index.of(&spec.name);
        members(spec, at.iter().map(|&n| &self.instances[n]), &self.doomed)
    }
}

/// The live members of `pool` among `instances` (borrowing from them).
pub fn members<'a>(
    spec: &PoolSpec,
    instances: impl IntoIterator<Item = &'a Instance>,
    doomed: &HashSet<InstanceId>,
) -> Vec<Member<'a>> {
    let instances = instances.into_iter();
    // Exact for a pool's own instances; bounded for a scan of every one.
    let mut out = Vec::with_capacity(instances.size_hint().0.min(4096));
    out.extend(
        instances
            .filter(|i| {
                i.tag(tags::POOL) == Some(spec.name.as_str())
                    && matches!(i.state, InstanceState::Pending | InstanceState::Running)
                    && i.tag(tags::STOPPED).is_none()
                    && !doomed.contains(&i.id)
            })
            .map(Member::of),
    );
    out
}
