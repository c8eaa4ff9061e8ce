//! Worker pools: instances scaled from the number of pending jobs in a queue.
//! Each pass observes the pool's instances and open spot requests by tag,
//! reads the demand, plans purely ([`plan::plan`]) and executes the steps
//! with an intent recorded before every launch.

pub mod demand;
pub mod pass;
pub mod plan;
pub mod view;

pub use crate::config::{Demand, PoolSpec, PoolType};
