//! What is whose: the tag filters that find an owner's and a box's
//! resources, the tags a launch sets, which instances count as a box's live
//! ones, and the keeper rule every racer agrees on.

use std::collections::BTreeMap;
use std::time::SystemTime;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Instance, SpotRequest, SpotRequestState, TagFilter};

use crate::config::BoxSpec;

/// Tags that mark a resource as this owner's.
pub fn owner_filter(owner: &str) -> TagFilter {
    TagFilter::default().with(tags::OWNER, owner)
}

/// Tags that mark a resource as this owner's box `box_name`.
pub fn box_filter(owner: &str, box_name: &str) -> TagFilter {
    owner_filter(owner).with(tags::BOX, box_name)
}

/// How long after a launch AWS may still leave the new instance out of a
/// listing, or answer `InvalidInstanceID.NotFound` for its id (eventual
/// consistency: "a resource may not be visible to all subsequent API calls
/// for a short period after you create it", usually seconds). Within it, a
/// launch spotkeeper recorded counts even where AWS does not list it yet:
/// never launch again because a describe did not show the last launch.
pub const LISTING_LAG: std::time::Duration = std::time::Duration::from_secs(120);

/// Live (pending or running) instances of a box that no `stop` has marked.
pub(crate) fn live(instances: Vec<Instance>) -> Vec<Instance> {
    instances
        .into_iter()
        .filter(|i| i.state.is_live() && i.tag(tags::STOPPED).is_none())
        .collect()
}

/// Open spot requests of a box that no `stop` has marked.
pub(crate) fn open_requests(requests: Vec<SpotRequest>) -> Vec<SpotRequest> {
    requests
        .into_iter()
        .filter(|r| r.state == SpotRequestState::Open && r.tag(tags::STOPPED).is_none())
        .collect()
}

/// Of several live instances of one box, the one every racer agrees to keep:
/// the oldest launch, then the smallest id. `up` and the daemon both use it.
pub fn keeper<'i, I>(instances: I) -> Option<&'i Instance>
where
    I: IntoIterator<Item = &'i Instance>,
{
    instances.into_iter().min_by(|a, b| {
        a.launched_at
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .cmp(&b.launched_at.unwrap_or(SystemTime::UNIX_EPOCH))
            .then_with(|| a.id.cmp(&b.id))
    })
}

/// Tags set at creation on the instance, its volumes and its spot request.
pub fn launch_tags(owner: &str, spec: &BoxSpec, token: &str) -> BTreeMap<String, String> {
    let mut t = spec.launch.tags.clone();
    t.insert(tags::NAME.into(), format!("spotkeeper-{}", spec.name));
    t.insert(tags::OWNER.into(), owner.into());
    t.insert(tags::BOX.into(), spec.name.clone());
    t.insert(tags::INTENT.into(), token.into());
    t
}
