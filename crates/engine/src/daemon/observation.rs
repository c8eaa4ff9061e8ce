//! What a pass saw: the owner's instances and spot requests, the instances
//! going away, prices and zones, with an index by box built on first use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{Instance, InstanceId, SpotPrice, SpotRequest};

use super::DOOMED_BOUND;
use super::tasks::Subject;
use crate::boxes::BoxError;
use crate::event_kind::EventKind;
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
    /// Doomed instances whose spot warning was recorded, with when (unix
    /// seconds): the pass starts a hook the warning's daemon did not.
    pub warned: HashMap<InstanceId, i64>,
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

impl super::Daemon<'_> {
    /// Observes the world once: the state file's doomed instances, every
    /// owned instance and spot request, and (for spot boxes) the prices the
    /// fast path launches from. Any failed describe fails the pass.
    /// Only the holder of the `fleet` lease (`fleet`) records what it saw:
    /// one history, not one write of every instance per daemon.
    pub(super) async fn observe(&self, fleet: bool) -> Result<Observation, BoxError> {
        let owner = &self.config.owner;
        let epochs = self.lock_memory().epochs.clone();
        let since = self.owned().doomed_since().await?;
        let bound = crate::store::unix_seconds(self.clock.now() - DOOMED_BOUND);
        let long_doomed: HashSet<InstanceId> = since
            .iter()
            .filter(|(_, at, _)| *at < bound)
            .map(|(id, _, _)| InstanceId::new(id.clone()))
            .collect();
        let warned: HashMap<InstanceId, i64> = since
            .iter()
            .filter(|(_, _, why)| why == EventKind::SpotInterruption.as_str())
            .map(|(id, at, _)| (InstanceId::new(id.clone()), *at))
            .collect();
        let doomed: HashSet<InstanceId> = since
            .into_iter()
            .map(|(id, _, _)| InstanceId::new(id))
            .collect();
        let filter = crate::boxes::owner_filter(owner);
        let instances = self.cloud.instances(&filter).await?;
        let requests = self.cloud.spot_requests(&filter).await?;
        if fleet && let Err(e) = self.owned().record_seen(&instances).await {
            tracing::warn!("cannot record the instances seen in the state file: {e}");
        }
        Ok(Observation {
            instances: Arc::new(instances),
            requests,
            doomed,
            long_doomed,
            warned,
            prices: Vec::new(),
            zones: Vec::new(),
            epochs,
            by_box: BoxIndex::default(),
        })
    }
}
