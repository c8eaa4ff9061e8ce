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
