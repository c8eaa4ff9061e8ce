//! What a pass saw: the owner's instances and spot requests, the instances
//! going away, prices and zones, with an index by box built on first use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use spotkeeper_cloud::{Instance, InstanceId, SpotPrice, SpotRequest};

use super::tasks::Subject;

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

/// The positions of each box's instances and spot requests in an
/// [`Observation`], built on first use: a pass over 2,000 boxes looks at
/// each instance once, not once per box.
#[derive(Debug, Clone, Default)]
pub struct BoxIndex(std::sync::OnceLock<HashMap<String, Positions>>);

/// Positions of one box's instances and of its spot requests.
type Positions = (Vec<usize>, Vec<usize>);

impl Observation {
    /// The instances and spot requests tagged for box `name`.
    pub fn of_box(&self, name: &str) -> (Vec<&Instance>, Vec<&SpotRequest>) {
        let index = self.by_box.0.get_or_init(|| {
            fn slot<'m>(by: &'m mut HashMap<String, Positions>, name: &str) -> &'m mut Positions {
                if !by.contains_key(name) {
                    by.insert(name.to_owned(), Default::default());
                }
                by.get_mut(name).expect("just inserted")
            }
            let mut by = HashMap::new();
            for (n, i) in self.instances.iter().enumerate() {
                if let Some(b) = i.tag(spotkeeper_cloud::model::tags::BOX) {
                    slot(&mut by, b).0.push(n);
                }
            }
            for (n, r) in self.requests.iter().enumerate() {
                if let Some(b) = r.tag(spotkeeper_cloud::model::tags::BOX) {
                    slot(&mut by, b).1.push(n);
                }
            }
            by
        });
        match index.get(name) {
            Some((i, r)) => (
                i.iter().map(|&n| &self.instances[n]).collect(),
                r.iter().map(|&n| &self.requests[n]).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        }
    }
}

impl Observation {
    /// The subject's epoch when this was observed.
    pub fn epoch(&self, subject: &Subject) -> u64 {
        self.epochs.get(subject).copied().unwrap_or(0)
    }
}
