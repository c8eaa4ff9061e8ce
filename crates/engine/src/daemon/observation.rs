//! What a pass saw: the owner's instances and spot requests, the instances
//! going away, prices and zones, with an index by box built on first use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use spotkeeper_cloud::{Instance, InstanceId, SpotPrice, SpotRequest};

use super::tasks::Subject;
use crate::tag_index::TagIndex;
use spotkeeper_cloud::model::tags;

/// One observation of the world, shared by the boxes and pools of a pass
/// and kept for the fast path.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Instances with the owner tag (shared with the pools' world and the
    /// API, not copied).
    pub instances: Arc<Vec<Instance>>,
    /// Spot requests with the owner tag.
    pub requests: Vec<SpotRequest>,
    /// Instances about to go away.
    pub doomed: HashSet<InstanceId>,
    /// Instances about to go away for longer than [`DOOMED_BOUND`](super::DOOMED_BOUND).
    pub long_doomed: HashSet<InstanceId>,
    /// Spot prices of the boxes' types in the region's zones.
    pub prices: Vec<SpotPrice>,
    /// The region's zones (read once per daemon).
    pub zones: Vec<String>,
    /// Each subject's epoch when observed.
    pub epochs: HashMap<Subject, u64>,
    /// `instances` and `requests` by box, built on first use.
    pub by_box: BoxIndex,
}

/// An [`Observation`]'s instances and spot requests by box, built on first
/// use ([`TagIndex`]): a pass over 2,000 boxes looks at each instance once,
/// not once per box.
#[derive(Debug, Clone, Default)]
pub struct BoxIndex(std::sync::OnceLock<(TagIndex, TagIndex)>);

impl Observation {
    /// The instances and spot requests tagged for box `name`.
    pub fn of_box(&self, name: &str) -> (Vec<&Instance>, Vec<&SpotRequest>) {
        let (instances, requests) = self.by_box.0.get_or_init(|| {
            (
                TagIndex::build(&self.instances, |i| i.tag(tags::BOX)),
                TagIndex::build(&self.requests, |r| r.tag(tags::BOX)),
            )
        });
        (
            instances
                .of(name)
                .iter()
                .map(|&n| &self.instances[n])
                .collect(),
            requests
                .of(name)
                .iter()
                .map(|&n| &self.requests[n])
                .collect(),
        )
    }
}

impl Observation {
    /// The subject's epoch when this was observed.
    pub fn epoch(&self, subject: &Subject) -> u64 {
        self.epochs.get(subject).copied().unwrap_or(0)
    }
}
