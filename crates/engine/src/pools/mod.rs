//! Worker pools: instances scaled from the number of pending jobs in a queue.
//! Each pass observes the pool's instances and open spot requests by tag,
//! reads the demand, plans purely ([`plan::plan`]) and executes the steps
//! with an intent recorded before every launch.

pub mod demand;
pub mod pass;
pub mod plan;
pub mod view;
pub mod world;

pub use crate::config::{Demand, PoolSpec, PoolType};

/// Why a pool pass or view failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// An AWS call failed.
    #[error(transparent)]
    Cloud(#[from] spotkeeper_cloud::CloudError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Takes a deleted pool's capacity down: its open (or active) spot requests
/// cancelled and its live instances terminated, both found by the pool tag.
/// Returns how many of each.
pub async fn take_down(
    cloud: &dyn spotkeeper_cloud::Cloud,
    owner: &str,
    name: &str,
) -> Result<(usize, usize), spotkeeper_cloud::CloudError> {
    use spotkeeper_cloud::SpotRequestState;
    let filter =
        crate::ownership::owner_filter(owner).with(spotkeeper_cloud::model::tags::POOL, name);
    let requests: Vec<_> = cloud
        .spot_requests(&filter)
        .await?
        .into_iter()
        .filter(|r| matches!(r.state, SpotRequestState::Open | SpotRequestState::Active))
        .map(|r| r.id)
        .collect();
    if !requests.is_empty() {
        cloud.cancel_spot_requests(&requests).await?;
    }
    let instances: Vec<_> = cloud
        .instances(&filter)
        .await?
        .into_iter()
        .filter(|i| i.state.is_live())
        .map(|i| i.id)
        .collect();
    if !instances.is_empty() {
        cloud.terminate(&instances).await?;
    }
    Ok((requests.len(), instances.len()))
}
